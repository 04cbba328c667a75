"""Memory and time of one training step through a deep stack of DARTS mixed nodes, three ways:
plain autograd, per-layer torch.utils.checkpoint, and the reversible engine (backprop with
reconstruction). CPU-only, a few minutes at most.

Memory is counted with saved-tensor hooks (revsearch.reversible.SavedTensorMeter): the bytes autograd
keeps alive for backward, unique storages, parameters excluded. ``forward_saved_bytes`` is what is held
between forward and backward; ``peak_activation_bytes`` is the maximum during forward + backward and so
includes the per-layer recomputation both checkpointing and the reversible backward do. Checkpointing
runs reentrant here so that its recomputation is visible to the hooks.

    python experiments/bench_reversible.py --json results/bench_reversible.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# On a shared machine idle OpenMP threads spin and distort timings; must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from revsearch.ops import OpConfig
from revsearch.reversible import MultiSplitCoupling, ReversibleStack, SavedTensorMeter
from revsearch.search.node import MixedNode, new_alpha

OPS = ("conv3", "conv7", "dynconv7", "self_attn", "ffn", "glu", "identity", "zero")
MODES = ("plain", "checkpoint", "reversible")


def build_stack(depth: int, hidden: int, splits: int, dropout: float, seed: int) -> ReversibleStack:
    torch.manual_seed(seed)
    config = OpConfig(dim=hidden // splits, causal=False, heads=8, dropout=dropout)
    layers = [MultiSplitCoupling([MixedNode(OPS, config, "max", new_alpha(len(OPS)))
                                  for _ in range(splits)]) for _ in range(depth)]
    return ReversibleStack(layers, checkpoint_reentrant=True)


def make_batch(batch: int, length: int, hidden: int, splits: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, hidden, generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[: batch // 2, length - length // 4:] = True  # some padding, like real batches
    x = x.masked_fill(pad[..., None], 0.0)
    return [t.contiguous().requires_grad_() for t in x.chunk(splits, -1)], pad


def one_step(stack, xs, pad, seed):
    """forward + backward; returns (forward_saved, peak, wall seconds, CPU seconds of this thread).

    With one torch thread all the work runs on this thread (CPU autograd runs backward on the caller),
    so its CPU time is a timing that other processes on a shared machine barely disturb."""
    stack.zero_grad(set_to_none=True)
    for x in xs:
        x.grad = None
    torch.manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.thread_time()
    with SavedTensorMeter(stack.parameters()) as meter:
        ys = stack(xs, (pad,))
        forward_saved = meter.live_bytes
        loss = sum((y * y).mean() for y in ys)
        loss.backward()
    return forward_saved, meter.peak_bytes, time.perf_counter() - start, time.thread_time() - cpu_start


def grad_vector(stack, xs):
    return torch.cat([p.grad.flatten() for p in stack.parameters() if p.grad is not None]
                     + [x.grad.flatten() for x in xs])


def run(depths, hidden, splits, batch, length, steps, dropout, seed):
    """Modes are timed round-robin (plain, checkpoint, reversible, plain, ...) so that load from other
    processes on a shared machine hits all three alike; the ratios are what to read."""
    records = []
    for depth in depths:
        stack = build_stack(depth, hidden, splits, dropout, seed)
        xs, pad = make_batch(batch, length, hidden, splits, seed)
        stats = {}
        for mode in MODES:
            stack.mode = mode
            saved, peak, _, _ = one_step(stack, xs, pad, seed)  # warm-up; gradient at a fixed seed
            stats[mode] = {"grads": grad_vector(stack, xs), "saved": saved, "peak": peak, "times": [],
                           "cpu": []}
        for _ in range(steps):
            for mode in MODES:
                stack.mode = mode
                _, _, wall, cpu = one_step(stack, xs, pad, seed)
                stats[mode]["times"].append(wall)
                stats[mode]["cpu"].append(cpu)
        reference = stats["plain"]["grads"]
        for mode in MODES:
            s = stats[mode]
            err = float((s["grads"] - reference).norm() / reference.norm())
            records.append({"depth": depth, "mode": mode, "forward_saved_bytes": s["saved"],
                            "peak_activation_bytes": s["peak"],
                            "step_seconds": statistics.median(s["times"]),
                            "step_cpu_seconds": statistics.median(s["cpu"]), "grad_rel_err": err})
        print(f"  depth {depth:2d}: " + ", ".join(
            f"{m} {statistics.median(stats[m]['times']):.3f}s" for m in MODES), file=sys.stderr)
    return records


def table(records) -> str:
    lines = [f"{'depth':>5} {'mode':>10} {'fwd saved MiB':>13} {'peak MiB':>9} {'step s':>7} "
             f"{'cpu s':>7} {'x plain cpu':>11} {'plain/x peak':>12} {'grad rel err':>12}"]
    plain = {r["depth"]: r for r in records if r["mode"] == "plain"}
    for r in records:
        p = plain[r["depth"]]
        lines.append(f"{r['depth']:>5} {r['mode']:>10} {r['forward_saved_bytes'] / 2**20:>13.2f} "
                     f"{r['peak_activation_bytes'] / 2**20:>9.2f} {r['step_seconds']:>7.3f} "
                     f"{r['step_cpu_seconds']:>7.3f} {r['step_cpu_seconds'] / p['step_cpu_seconds']:>11.2f} "
                     f"{p['peak_activation_bytes'] / r['peak_activation_bytes']:>12.1f} "
                     f"{r['grad_rel_err']:>12.2e}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--hidden", type=int, default=256, help="model width d (default 256)")
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="sentences per batch")
    parser.add_argument("--length", type=int, default=64, help="tokens per sentence")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per point (median reported)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 gives the steadiest ratios on a shared machine)")
    parser.add_argument("--json", metavar="PATH", help="write {'records': [...]} here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"d={args.hidden} n={args.splits} batch={args.batch}x{args.length} ops={','.join(OPS)} "
          f"dropout={args.dropout}; memory = saved-tensor bytes (parameters excluded)", file=sys.stderr)
    records = run(args.depths, args.hidden, args.splits, args.batch, args.length, args.steps,
                  args.dropout, args.seed)
    print(table(records))
    rev = {r["depth"]: r for r in records if r["mode"] == "reversible"}
    if len(rev) > 1:
        lo, hi = min(rev), max(rev)
        growth = rev[hi]["peak_activation_bytes"] / rev[lo]["peak_activation_bytes"] - 1
        print(f"reversible peak growth depth {lo}->{hi}: {growth * 100:.1f}%")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "ops": OPS, "records": records}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
