"""Pictures of a search: the α heat-map (op probabilities per node), a diagram of the derived cell (both
drawn from a genotype alone, so they can be re-made from the JSON logged to MLflow), and the α
trajectories (each node's op probabilities over the reports of the search)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from .genotype import SIDES, Genotype  # noqa: E402
from .trajectory import AlphaTrajectory  # noqa: E402


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


def plot_alpha_trajectories(trajectory: AlphaTrajectory, genotype: Genotype, path: str,
                            title: str = "softmax(α) over the search", alpha_warmup_steps: int = 0) -> str:
    """One small panel per node (rows: side and cell layer, columns: split), one line per op; the op the
    genotype chose is drawn thick, so a choice that won only at the very end stands out. A dashed line
    marks the end of the θ-only warm-up, when there is one."""
    rows = [(side, layer) for side in SIDES for layer in range(len(genotype.side(side).cell))]
    n = genotype.splits
    fig, axes = plt.subplots(len(rows), n, figsize=(3.3 * n + 2.2, 1.9 * len(rows) + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    steps = list(trajectory.steps)
    names = list(dict.fromkeys(c for side in SIDES for c in genotype.side(side).candidates))
    cmap = plt.get_cmap("tab20")
    colors = {name: cmap(i % 20) for i, name in enumerate(names)}
    for r, (side, layer) in enumerate(rows):
        cell = genotype.side(side)
        history = trajectory.side(side)
        for k in range(n):
            ax = axes[r][k]
            chosen = cell.cell[layer][k]
            if steps:
                for j, name in enumerate(cell.candidates):
                    ax.plot(steps, history[:, layer, k, j].tolist(), color=colors[name],
                            lw=2.6 if name == chosen else 0.9, alpha=1.0 if name == chosen else 0.7,
                            label=name, marker="o" if len(steps) == 1 else None, ms=3)
            else:
                ax.text(0.5, 0.5, "no reports recorded", ha="center", va="center", transform=ax.transAxes)
            if alpha_warmup_steps > 0:
                ax.axvline(alpha_warmup_steps, color="0.4", ls="--", lw=0.8)
            ax.set_title(f"{side[:3]} L{layer} G{k + 1}: {chosen}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    handles = [plt.Line2D([], [], color=colors[name], lw=2) for name in names]
    fig.legend(handles, names, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title + " (thick: derived choice)")
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / (3.3 * n + 2.2), 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
