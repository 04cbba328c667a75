"""The ranking of retrained architectures: built from retrain results (end of a run) or from MLflow
(``revsearch report``), printed, and saved as Markdown and CSV. Also the Pareto front for
multi-objective sweeps (quality vs parameter count)."""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Iterable, List, Optional, Sequence, Tuple


@dataclass
class RankRow:
    label: str
    kind: str                   # derived | baseline
    bleu: float
    chrf: float
    params: int
    search_seconds: float       # the search trial that found the genotype (0 for the baseline)
    retrain_seconds: float
    genotype: str               # short description
    search_trial: str = ""
    mlflow_run_id: str = ""
    bleu_signature: str = ""


def rank(rows: Iterable[RankRow]) -> List[RankRow]:
    """Best BLEU first; ties broken by fewer parameters."""
    return sorted(rows, key=lambda r: (-(r.bleu if not math.isnan(r.bleu) else -1e9), r.params))


def _cell(text) -> str:
    """A table cell: genotype descriptions separate splits with ``|``, which would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[RankRow], title: str = "") -> str:
    lines = [f"# {title}", ""] if title else []
    lines += ["| rank | model | kind | BLEU | chrF | params | search s | retrain s | architecture |",
              "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {_cell(r.label)} | {r.kind} | {r.bleu:.2f} | {r.chrf:.2f} | {r.params:,} | "
                     f"{r.search_seconds:.0f} | {r.retrain_seconds:.0f} | {_cell(r.genotype)} |")
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
