"""Ranking files and the Pareto front used for multi-objective sweeps."""
import csv
import math

from revsearch.orchestration.ranking import (RankRow, SeedResult, aggregate, pareto_front, plot_pareto, rank,
                                             summary, to_csv, to_markdown, write_ranking)


def row(label, bleu, params, kind="derived", test=None):
    return RankRow(label=label, kind=kind, seeds=1, valid_bleu=bleu, valid_bleu_std=0.0,
                   test_bleu=bleu - 1 if test is None else test, test_bleu_std=0.0, test_chrf=bleu + 10,
                   params=params, target_params=0, param_deviation=math.nan, delta_vs_baseline=math.nan,
                   p_value=math.nan, search_seconds=5.0, retrain_seconds=7.0, genotype="enc[ffn] dec[conv3]",
                   bleu_signature="nrefs:1|tok:13a")


def test_rank_orders_by_validation_bleu_then_params_and_puts_nan_last():
    rows = rank([row("a", 20.0, 100, test=99.0), row("b", 25.0, 300), row("c", 25.0, 200), row("d", math.nan, 1)])
    assert [r.label for r in rows] == ["c", "b", "a", "d"]


def test_markdown_and_csv_agree(tmp_path):
    rows = rank([row("a", 20.0, 100), row("base", 22.5, 500, kind="baseline")])
    md, cs = write_ranking(rows, str(tmp_path), title="t")
    text = open(md).read()
    assert text.startswith("# t") and "| 1 | base | baseline | 1 | 22.50 | 21.50 |" in text and "nrefs:1|tok:13a" in text
    parsed = list(csv.DictReader(open(cs)))
    assert [(r["rank"], r["label"], float(r["valid_bleu"]), float(r["test_bleu"])) for r in parsed] == [
        ("1", "base", 22.5, 21.5), ("2", "a", 20.0, 19.0)]
    assert {"valid_bleu", "test_bleu", "params", "kind"} <= set(parsed[0])
    assert to_csv(rows) == open(cs, newline="").read()
    assert to_markdown(rows).count("\n|") == 3


def seed_result(label, kind, seed, valid, test, params=1000, target=1000, run=None):
    return SeedResult(label=label, kind=kind, seed=seed, valid_bleu=valid, test_bleu=test, test_chrf=test + 5,
                      params=params, target_params=target, train_seconds=10.0 + seed,
                      mlflow_run_id=run or f"{label}-{seed}", bleu_signature="sig")


def test_aggregate_gives_mean_std_deviation_and_registers_the_best_validation_seed():
    results = [seed_result("base", "baseline", 0, 20.0, 19.0, params=1010),
               seed_result("base", "baseline", 1, 22.0, 21.0, params=1010),
               seed_result("d1", "derived", 0, 24.0, 30.0, params=990),
               seed_result("d1", "derived", 1, 26.0, 20.0, params=990),
               seed_result("r1", "random", 0, 10.0, 9.0, params=1020)]
    rows = aggregate(results, {"d1": {"genotype": "g", "search_trial": "t1", "search_seconds": 3.0}})
    assert [r.label for r in rows] == ["d1", "base", "r1"]
    d1, base, r1 = rows
    assert d1.seeds == 2 and d1.valid_bleu == 25.0 and abs(d1.valid_bleu_std - math.sqrt(2.0)) < 1e-12
    assert d1.test_bleu == 25.0 and d1.mlflow_run_id == "d1-1"       # seed 1 has the better *validation* BLEU
    assert d1.delta_vs_baseline == 25.0 - 20.0 and math.isnan(base.delta_vs_baseline)
    assert abs(d1.param_deviation - (-0.01)) < 1e-12 and abs(r1.param_deviation - 0.02) < 1e-12
    assert d1.genotype == "g" and d1.search_trial == "t1" and d1.search_seconds == 3.0
    verdict = summary(rows)
    assert verdict["delta_vs_transformer"] == 5.0 and verdict["delta_vs_random"] == 25.0 - 9.0
    text = to_markdown(rows)
    assert "25.00 ± 1.41" in text and "-1.0%" in text and "+5.00" in text


def _corpus(rng, n=60):
    words = "the a cat dog sat ran on under mat house big small red blue quickly slowly".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) for _ in range(n)]


def _noisy(rng, refs, keep):
    """Hypotheses that keep each reference word with probability ``keep``."""
    return [" ".join(w for w in r.split() if rng.random() < keep) or "the" for r in refs]


def test_permuting_test_references_changes_no_ranking_and_no_registered_model():
    """Scores computed with sacreBLEU from real hypothesis/reference text: candidates of varying quality
    on validation and test. Shuffling the test references changes every test score, and the ranking and
    the registered run (the best row's best validation seed) stay exactly the same."""
    import random
    from revsearch.train.evaluate import score
    rng = random.Random(7)
    valid_refs, test_refs = _corpus(rng), _corpus(rng)
    systems = {"base": ("baseline", 0.7), "d1": ("derived", 0.8), "d2": ("derived", 0.6), "r1": ("random", 0.4)}
    outputs = {(label, seed): (_noisy(rng, valid_refs, keep + 0.05 * seed), _noisy(rng, test_refs, keep))
               for label, (_, keep) in systems.items() for seed in (0, 1)}

    def rows_for(references):
        results = []
        for (label, seed), (valid_hyps, test_hyps) in outputs.items():
            valid = score(valid_hyps, valid_refs)[0].score
            test = score(test_hyps, references)[0].score
            results.append(seed_result(label, systems[label][0], seed, valid, test))
        return aggregate(results, {})

    original = rows_for(test_refs)
    for attempt in range(3):
        shuffled = list(test_refs)
        random.Random(attempt).shuffle(shuffled)
        permuted = rows_for(shuffled)
        assert [r.test_bleu for r in permuted] != [r.test_bleu for r in original]
        assert [r.label for r in permuted] == [r.label for r in original]
        assert permuted[0].mlflow_run_id == original[0].mlflow_run_id


def test_paired_bootstrap_is_sacrebleus_and_pairs_seeds():
    import random
    from sacrebleu.metrics import BLEU
    from revsearch.train.significance import paired_bootstrap
    rng = random.Random(3)
    refs = _corpus(rng, 80)
    base = {s: _noisy(rng, refs, 0.5) for s in (0, 1)}
    good = {s: _noisy(rng, refs, 0.9) for s in (0, 1, 2)}      # seed 2 has no baseline partner: left out
    same = {s: _noisy(rng, refs, 0.5) for s in (0, 1)}     # equal quality, other noise
    better = paired_bootstrap(base, good, refs, samples=300)
    assert better.seeds == 2 and better.p_value < 0.01 and better.delta > 10
    pooled_refs = refs + refs
    expected = (BLEU().corpus_score(good[0] + good[1], [pooled_refs]).score
                - BLEU().corpus_score(base[0] + base[1], [pooled_refs]).score)
    assert abs(better.delta - expected) < 1e-9 and "bs:300" in better.signature
    null = paired_bootstrap(base, same, refs, samples=300)
    assert abs(null.delta) < 3 and null.p_value > 0.05
    assert paired_bootstrap({0: base[0]}, {1: good[1]}, refs) is None


def test_aggregate_adds_paired_bootstrap_p_values_against_the_transformer():
    import random
    rng = random.Random(5)
    refs = _corpus(rng, 50)
    hyps = {("base", 0): _noisy(rng, refs, 0.5), ("d1", 0): _noisy(rng, refs, 0.95)}
    results = [seed_result("base", "baseline", 0, 20.0, 20.0), seed_result("d1", "derived", 0, 30.0, 30.0)]
    rows = aggregate(results, {}, hypotheses=lambda r: hyps[(r.label, r.seed)], references=refs,
                     bootstrap_samples=200)
    assert rows[0].label == "d1" and rows[0].p_value < 0.05 and math.isnan(rows[1].p_value)
    assert "(p=0.005)" in to_markdown(rows)


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
