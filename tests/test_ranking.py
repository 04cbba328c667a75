"""Ranking files and the Pareto front used for multi-objective sweeps."""
import csv
import io
import math

from revsearch.orchestration.ranking import (RankRow, pareto_front, plot_pareto, rank, to_csv, to_markdown,
                                             write_ranking)


def row(label, bleu, params, kind="derived"):
    return RankRow(label=label, kind=kind, bleu=bleu, chrf=bleu + 10, params=params, search_seconds=5.0,
                   retrain_seconds=7.0, genotype="enc[ffn] dec[conv3]", bleu_signature="nrefs:1|tok:13a")


def test_rank_orders_by_bleu_then_params_and_puts_nan_last():
    rows = rank([row("a", 20.0, 100), row("b", 25.0, 300), row("c", 25.0, 200), row("d", math.nan, 1)])
    assert [r.label for r in rows] == ["c", "b", "a", "d"]


def test_markdown_and_csv_agree(tmp_path):
    rows = rank([row("a", 20.0, 100), row("base", 22.5, 500, kind="baseline")])
    md, cs = write_ranking(rows, str(tmp_path), title="t")
    text = open(md).read()
    assert text.startswith("# t") and "| 1 | base | baseline | 22.50 |" in text and "nrefs:1|tok:13a" in text
    parsed = list(csv.DictReader(open(cs)))
    assert [(r["rank"], r["label"], float(r["bleu"])) for r in parsed] == [("1", "base", 22.5), ("2", "a", 20.0)]
    assert to_csv(rows) == open(cs, newline="").read()
    assert to_markdown(rows).count("\n|") == 3


def test_pareto_front_min_min_and_min_max():
    points = [(1.0, 500), (2.0, 100), (1.5, 300), (2.5, 400), (1.0, 600)]
    assert pareto_front(points, ["min", "min"]) == [0, 1, 2]
    # maximise the second objective instead: (1.0, 600) dominates (1.0, 500)
    assert pareto_front(points, ["min", "max"]) == [4]


def test_pareto_picture(tmp_path):
    points = [(1.0, 500.0), (2.0, 100.0), (2.5, 400.0)]
    path = plot_pareto(points, pareto_front(points, ["min", "min"]), ["t1", "t2", "t3"],
                       ["valid_loss", "params"], str(tmp_path / "p.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_markdown_cells_keep_genotype_pipes_inside_the_cell():
    """Genotype descriptions separate splits with ``|``: unescaped, a row would gain columns."""
    import re
    r = row("a", 20.0, 100)
    r.genotype = "enc[conv3+conv11 | glu+ffn] dec[conv3 | self_attn]"
    table = [l for l in to_markdown([r]).splitlines() if l.startswith("|")]
    columns = [len(re.split(r"(?<!\\)\|", l)) for l in table]
    assert len(set(columns)) == 1, table
    assert "conv3+conv11 \\| glu+ffn" in table[-1]
