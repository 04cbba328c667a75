"""The ranking of retrained architectures: built from retrain results (end of a run) or from MLflow
(``revsearch report``), printed, and saved as Markdown and CSV. Every (candidate, seed) retrain is one
:class:`SeedResult`; a candidate's row aggregates its seeds. Rows are ordered by validation BLEU only, so
nothing decided here reads the test set. Also the Pareto front for
multi-objective sweeps (quality vs parameter count)."""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple


@dataclass
class SeedResult:
    """One retrain: a candidate trained with one seed and scored on the validation and test sets."""
    label: str
    kind: str                   # derived | baseline | random
    seed: int
    valid_bleu: float
    test_bleu: float
    test_chrf: float
    params: int
    target_params: int = 0      # 0: sizes were not matched (retrain.size.match: width)
    train_seconds: float = 0.0
    mlflow_run_id: str = ""
    bleu_signature: str = ""


@dataclass
class RankRow:
    """A candidate over all its seeds. Ranked by ``valid_bleu`` only; test columns are reported."""
    label: str
    kind: str                   # derived | baseline | random
    seeds: int
    valid_bleu: float           # mean over seeds
    valid_bleu_std: float
    test_bleu: float            # mean over seeds (reported, never used to decide)
    test_bleu_std: float
    test_chrf: float
    params: int
    target_params: int
    param_deviation: float      # (params - target) / target; NaN without a target
    delta_vs_baseline: float    # mean test BLEU minus the Transformer's; NaN for the baseline itself
    p_value: float              # sacreBLEU paired bootstrap vs the Transformer, seeds pooled; NaN if none
    search_seconds: float       # the search trial that found the genotype (0 for baseline and random)
    retrain_seconds: float      # mean over seeds
    genotype: str               # short description
    search_trial: str = ""
    mlflow_run_id: str = ""     # the seed with the best validation BLEU: what gets registered
    bleu_signature: str = ""


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(results: Iterable[SeedResult], described: Mapping[str, Mapping[str, object]],
              hypotheses: Optional[Callable[[SeedResult], Optional[List[str]]]] = None,
              references: Optional[Sequence[str]] = None, bootstrap_samples: int = 1000) -> List[RankRow]:
    """One row per candidate: mean ± std over its seeds, the registered seed chosen on validation BLEU,
    and, given the test hypotheses and references, each model's paired-bootstrap comparison with the
    Transformer baseline. ``described[label]`` gives ``genotype``, ``search_trial``, ``search_seconds``."""
    groups: Dict[str, List[SeedResult]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    test_hyps: Dict[str, Dict[int, List[str]]] = {}
    if hypotheses is not None and references is not None:
        for label, group in groups.items():
            found = {r.seed: hypotheses(r) for r in group}
            test_hyps[label] = {seed: h for seed, h in found.items() if h is not None}
    baseline = next((label for label, g in groups.items() if g[0].kind == "baseline"), None)
    baseline_mean = _mean_std([r.test_bleu for r in groups[baseline]])[0] if baseline else math.nan
    rows = []
    for label, group in groups.items():
        group.sort(key=lambda r: r.seed)
        valid, valid_std = _mean_std([r.valid_bleu for r in group])
        test, test_std = _mean_std([r.test_bleu for r in group])
        chrf, _ = _mean_std([r.test_chrf for r in group])
        chosen = max(group, key=lambda r: (r.valid_bleu if not math.isnan(r.valid_bleu) else -1e9, -r.seed))
        target = max(r.target_params for r in group)
        params = group[0].params
        delta, p_value = math.nan, math.nan
        if baseline and label != baseline:
            delta = test - baseline_mean
            if test_hyps.get(label) and test_hyps.get(baseline):
                from ..train.significance import paired_bootstrap
                comparison = paired_bootstrap(test_hyps[baseline], test_hyps[label], references,
                                              samples=bootstrap_samples)
                if comparison is not None:
                    p_value = comparison.p_value
        info = described.get(label, {})
        rows.append(RankRow(
            label=label, kind=group[0].kind, seeds=len(group), valid_bleu=valid, valid_bleu_std=valid_std,
            test_bleu=test, test_bleu_std=test_std, test_chrf=chrf, params=params, target_params=target,
            param_deviation=(params - target) / target if target else math.nan,
            delta_vs_baseline=delta, p_value=p_value,
            search_seconds=float(info.get("search_seconds", 0.0) or 0.0),
            retrain_seconds=_mean_std([r.train_seconds for r in group])[0],
            genotype=str(info.get("genotype", "")), search_trial=str(info.get("search_trial", "") or ""),
            mlflow_run_id=chosen.mlflow_run_id, bleu_signature=chosen.bleu_signature))
    return rank(rows)


def rank(rows: Iterable[RankRow]) -> List[RankRow]:
    """Best *validation* BLEU first (the test set never decides); ties broken by fewer parameters."""
    return sorted(rows, key=lambda r: (-(r.valid_bleu if not math.isnan(r.valid_bleu) else -1e9), r.params,
                                       r.label))


def summary(rows: Sequence[RankRow]) -> Dict[str, float]:
    """The verdict in numbers (test BLEU means over seeds): the best derived model by validation BLEU
    against the Transformer and against the mean of the random genotypes."""
    derived = [r for r in rank(rows) if r.kind == "derived"]
    randoms = [r.test_bleu for r in rows if r.kind == "random" and not math.isnan(r.test_bleu)]
    out: Dict[str, float] = {}
    if derived:
        best = derived[0]
        out["best_derived_test_bleu"] = best.test_bleu
        out["delta_vs_transformer"] = best.delta_vs_baseline
        out["p_value"] = best.p_value
        if randoms:
            out["random_mean_test_bleu"] = sum(randoms) / len(randoms)
            out["delta_vs_random"] = best.test_bleu - out["random_mean_test_bleu"]
    return out


def _cell(text) -> str:
    """A table cell: genotype descriptions separate splits with ``|``, which would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pm(mean: float, std: float, seeds: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if seeds > 1 else f"{mean:.2f}"


def _vs_baseline(r: RankRow) -> str:
    if math.isnan(r.delta_vs_baseline):
        return "—"
    p = f" (p={r.p_value:.3f})" if not math.isnan(r.p_value) else ""
    return f"{r.delta_vs_baseline:+.2f}{p}"


def to_markdown(rows: Sequence[RankRow], title: str = "") -> str:
    lines = [f"# {title}", ""] if title else []
    lines += ["| rank | model | kind | seeds | valid BLEU | test BLEU | test chrF | params | vs target | "
              "Δ test BLEU vs Transformer | search s | retrain s | architecture |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(rows, 1):
        deviation = f"{100 * r.param_deviation:+.1f}%" if not math.isnan(r.param_deviation) else "—"
        lines.append(f"| {i} | {_cell(r.label)} | {r.kind} | {r.seeds} | {_pm(r.valid_bleu, r.valid_bleu_std, r.seeds)} | "
                     f"{_pm(r.test_bleu, r.test_bleu_std, r.seeds)} | {r.test_chrf:.2f} | {r.params:,} | "
                     f"{deviation} | {_vs_baseline(r)} | {r.search_seconds:.0f} | {r.retrain_seconds:.0f} | "
                     f"{_cell(r.genotype)} |")
    lines += ["", "Ranked by validation BLEU (mean over seeds); test BLEU/chrF are reported, never used to choose. "
                  "Δ: mean test BLEU minus the Transformer's, p: sacreBLEU paired bootstrap (seeds pooled)."]
    verdict = summary(rows)
    if "delta_vs_random" in verdict:
        lines.append(f"Best derived model vs the mean of the random genotypes: {verdict['delta_vs_random']:+.2f} "
                     f"test BLEU.")
    targets = {r.target_params for r in rows if r.target_params}
    if targets:
        lines.append("Parameter target: " + ", ".join(f"{t:,}" for t in sorted(targets)) + ".")
    signatures = sorted({r.bleu_signature for r in rows if r.bleu_signature})
    if signatures:
        lines += ["", "sacreBLEU: " + "; ".join(signatures)]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[RankRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["rank"] + [f.name for f in fields(RankRow)])
    writer.writeheader()
    for i, r in enumerate(rows, 1):
        writer.writerow({"rank": i, **asdict(r)})
    return buffer.getvalue()


def write_ranking(rows: Sequence[RankRow], directory: str, title: str = "") -> Tuple[str, str]:
    os.makedirs(directory, exist_ok=True)
    md, cs = os.path.join(directory, "ranking.md"), os.path.join(directory, "ranking.csv")
    with open(md, "w", encoding="utf-8") as f:
        f.write(to_markdown(rows, title))
    with open(cs, "w", encoding="utf-8", newline="") as f:
        f.write(to_csv(rows))
    return md, cs


def pareto_front(points: Sequence[Tuple[float, ...]], modes: Sequence[str]) -> List[int]:
    """Indices of non-dominated points; ``modes`` says per objective whether lower (min) or higher
    (max) is better."""
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    keyed = [tuple(s * v for s, v in zip(signs, p)) for p in points]
    front = []
    for i, p in enumerate(keyed):
        dominated = any(all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
                        for j, q in enumerate(keyed) if j != i)
        if not dominated:
            front.append(i)
    return front


def plot_pareto(points: Sequence[Tuple[float, float]], front: Sequence[int], labels: Sequence[str],
                names: Sequence[str], path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs, ys = [p[1] for p in points], [p[0] for p in points]
    ax.scatter(xs, ys, c="#999999", label="trials")
    order = sorted(front, key=lambda i: points[i][1])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], "o-", c="#d62728", label="Pareto front")
    for i, text in enumerate(labels):
        ax.annotate(text, (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(names[1])
    ax.set_ylabel(names[0])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_row(rows: Sequence[RankRow]) -> Optional[RankRow]:
    ranked = rank(rows)
    return ranked[0] if ranked else None
