"""Pictures of a search: the α heat-map (op probabilities per node) and a diagram of the derived cell.
Both are drawn from a genotype alone, so they can be re-made from the JSON logged to MLflow."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from .genotype import SIDES, Genotype  # noqa: E402


def plot_alpha_heatmap(genotype: Genotype, path: str, title: str = "softmax(α) per node") -> str:
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.45 * max(
        len(genotype.side(s).cell) * genotype.splits for s in SIDES)), squeeze=False)
    for ax, side in zip(axes[0], SIDES):
        cell = genotype.side(side)
        rows = [p for layer in cell.probabilities for p in layer]
        labels = [f"L{i} G{k + 1}" for i, layer in enumerate(cell.probabilities) for k in range(len(layer))]
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(len(cell.candidates)), cell.candidates, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for r, probs in enumerate(rows):
            best = max(range(len(probs)), key=probs.__getitem__)
            ax.text(best, r, f"{probs[best]:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_title(side)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cell(genotype: Genotype, path: str) -> str:
    """Boxes per split and layer: what op updates each split, bottom layer first."""
    n = genotype.splits
    fig, axes = plt.subplots(1, 2, figsize=(3.2 * (n + 1), 1.5 + 1.1 * max(
        len(genotype.side(s).cell) for s in SIDES)), squeeze=False)
    for ax, side in zip(axes[0], SIDES):
        cell = genotype.side(side).cell
        columns = n + (1 if side == "decoder" else 0)
        for i, layer in enumerate(cell):
            ops = list(layer) + (["cross_attn (fixed)"] if side == "decoder" else [])
            for k, op in enumerate(ops):
                color = "#f2d7a6" if "fixed" in op else "#bcd7f2"
                ax.add_patch(FancyBboxPatch((k + 0.05, i + 0.15), 0.9, 0.7,
                                            boxstyle="round,pad=0.02", fc=color, ec="k"))
                ax.text(k + 0.5, i + 0.5, f"G{k + 1}: {op}", ha="center", va="center", fontsize=8)
        ax.set_xlim(0, columns)
        ax.set_ylim(0, len(cell))
        ax.set_xticks([k + 0.5 for k in range(columns)], [f"split {k + 1}" for k in range(columns)])
        ax.set_yticks([i + 0.5 for i in range(len(cell))], [f"layer {i}" for i in range(len(cell))])
        ax.set_title(f"{side} cell (pool={genotype.pooling})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
