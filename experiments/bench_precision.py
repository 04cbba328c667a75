"""Mixed precision on this machine: bf16 vs fp32 reconstruction error, search step time and loss curve
(GitHub issue 14, items 5 and 7).

* ``recon_err``: a depth-12 reversible encoder of the DARTS supernet (full op set, dropout on, padding in
  the batch) runs forward under the precision's autocast and rebuilds its input top-down the way
  backward does (``ReversibleStack.reconstruction_report``: each G_k recomputed under the forward's RNG
  and autocast state, subtracted in the states' dtype). The figure is the relative error ``|x' - x| / |x|`` of the
  rebuilt stack input (layer 0, where errors have compounded through all 12 layers); ``recon_max_abs``
  is the largest absolute error. Under autocast the stack keeps its split states in float64 (the default,
  ``ReversibleStack.autocast_state_dtype``); the ablation row keeps them in float32, which lets bf16
  rounding flips of the rebuilt G_k inputs through (see ``ReversibleStack.residual_splits``).
* ``step_seconds`` / ``step_cpu_seconds``: median wall / process-CPU time of one ``BilevelSearch.step``
  (α step + θ step, first order) of a reversible supernet after warm-up steps, the variants stepping
  round robin; with 1 thread the CPU time is the figure load from other processes does not inflate.
* loss curves: ``--curve-steps`` search steps from the same initial weights and batches, fp32 and bf16;
  ``max_abs_loss_diff`` is the largest |train_loss_fp32 - train_loss_bf16| over the steps.

fp16 is not measured on CPU: where it is supported it is emulated (see learning/precision.py).

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/bench_precision.py --json results/bench_precision.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort timings on a shared box

import torch  # noqa: E402

from revsearch.learning.precision import autocast, autocast_supported  # noqa: E402
from revsearch.search import BilevelSearch, SearchConfig, Supernet, SupernetConfig  # noqa: E402
from toy_tasks import reversal_batch  # noqa: E402  (experiments/ is the script's folder, on sys.path)

DEFAULTS = dict(hidden=256, splits=2, embed_dim=128, depth=12, layers=4, sentences=16, length=32, vocab=1000,
                warmup=2, steps=5, curve_steps=50, curve_hidden=64, threads=1)
QUICK = dict(hidden=32, splits=2, embed_dim=16, depth=12, layers=2, sentences=4, length=8, vocab=64,
             warmup=1, steps=2, curve_steps=4, curve_hidden=16, threads=1)


def supernet(a, hidden: int, encoder_layers: int, decoder_layers: int, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return Supernet(SupernetConfig(vocab_size=a.vocab, hidden=hidden, splits=a.splits, embed_dim=a.embed_dim,
                                   encoder_layers=encoder_layers, decoder_layers=decoder_layers, heads=4,
                                   dropout=0.1, cell_layers=2))


@torch.no_grad()
def reconstruction(a, precision: str, state_dtype=torch.float64):
    net = supernet(a, a.hidden, a.depth, 1).train()
    net.encoder.autocast_state_dtype = state_dtype
    src, _, _ = reversal_batch(a.sentences, a.length, a.vocab, seed=1)
    pad_mask = src.eq(0)
    torch.manual_seed(2)
    with autocast(precision, "cpu"):
        splits = net._splits(net.encoder_in(net._embed(src)), a.splits, pad_mask)
        report = net.encoder.reconstruction_report(splits, (pad_mask,))
    return report[0]["rel_error"], report[0]["max_abs_error"]


def step_times(a, variants):
    """Median wall and process-CPU seconds of one search step per ``(precision, state_dtype)`` variant.
    The variants step in turn (one step each, round robin) so that load from other processes on a
    shared machine hits them alike; with one thread, CPU time is the figure that load does not inflate."""
    searches = []
    for precision, state_dtype in variants:
        net = supernet(a, a.hidden, a.layers, a.layers)
        net.encoder.autocast_state_dtype = net.decoder.autocast_state_dtype = state_dtype
        searches.append(BilevelSearch(net, SearchConfig(warmup_steps=100, precision=precision)))
    wall, cpu = [[] for _ in variants], [[] for _ in variants]
    for step in range(a.warmup + a.steps):
        weight = reversal_batch(a.sentences, a.length, a.vocab, seed=10 + 2 * step)
        arch = reversal_batch(a.sentences, a.length, a.vocab, seed=11 + 2 * step)
        for i, search in enumerate(searches):
            start, start_cpu = time.perf_counter(), time.process_time()
            search.step(weight, arch)
            if step >= a.warmup:
                wall[i].append(time.perf_counter() - start)
                cpu[i].append(time.process_time() - start_cpu)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def loss_curve(a, precision: str):
    net = supernet(a, a.curve_hidden, 2, 2)
    search = BilevelSearch(net, SearchConfig(lr=2e-3, warmup_steps=10, alpha_lr=3e-3, precision=precision))
    torch.manual_seed(3)  # dropout draws: the same stream for both precisions
    losses = []
    for step in range(a.curve_steps):
        weight = reversal_batch(8, 10, 32, seed=100 + 2 * (step % 16))
        arch = reversal_batch(8, 10, 32, seed=101 + 2 * (step % 16))
        losses.append(search.step(weight, arch)["train_loss"])
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} (quick: {QUICK[key]})")
    parser.add_argument("--json", metavar="PATH", help='write {"precision": [...], "loss_curves": {...}} here')
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    precisions = [p for p in ("fp32", "bf16") if autocast_supported(p, "cpu")]

    # the last variant is the ablation: bf16 with the split states kept in float32 instead of float64
    variants = [(p, torch.float64) for p in precisions] + ([("bf16", torch.float32)] if "bf16" in precisions else [])
    times = step_times(args, variants)
    rows = []
    for (precision, state_dtype), (wall, cpu) in zip(variants, times):
        recon_err, recon_max_abs = reconstruction(args, precision, state_dtype)
        rows.append({"dtype": precision, "state_dtype": "float32" if precision == "fp32" else str(state_dtype)[6:],
                     "recon_err": recon_err, "recon_max_abs": recon_max_abs, "step_seconds": wall,
                     "step_cpu_seconds": cpu})
    ablation = rows.pop() if len(rows) > len(precisions) else None
    curves = {p: loss_curve(args, p) for p in precisions}
    diffs = [abs(x - y) for x, y in zip(curves["fp32"], curves.get("bf16", curves["fp32"]))]
    summary = {"steps": args.curve_steps, "max_abs_loss_diff": max(diffs),
               "final_loss": {p: c[-1] for p, c in curves.items()}, "first_loss": {p: c[0] for p, c in curves.items()},
               "curves": curves}

    print(f"reconstruction: depth-{args.depth} supernet encoder, hidden {args.hidden}, {args.splits} splits, "
          f"{args.sentences}x{args.length} tokens; step: {args.layers}+{args.layers} layers; "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'dtype':<6} {'states':<8} {'recon rel err':>14} {'recon max abs':>14} {'step s':>8} {'step cpu s':>10} "
          f"{'cpu vs fp32':>11}")
    for r in rows + ([ablation] if ablation else []):
        print(f"{r['dtype']:<6} {r['state_dtype']:<8} {r['recon_err']:>14.3e} {r['recon_max_abs']:>14.3e} "
              f"{r['step_seconds']:>8.3f} {r['step_cpu_seconds']:>10.3f} "
              f"{r['step_cpu_seconds'] / rows[0]['step_cpu_seconds']:>10.2f}x")
    if len(rows) > 1:
        print(f"bf16 / fp32 reconstruction error: {rows[1]['recon_err'] / max(rows[0]['recon_err'], 1e-30):.3g}x "
              f"(split states float64 under autocast)")
    if ablation:
        print(f"ablation (last row), bf16 with float32 split states: reconstruction error "
              f"{ablation['recon_err'] / max(rows[0]['recon_err'], 1e-30):.3g}x fp32's")
    print(f"{args.curve_steps}-step search loss curves: max |fp32 - bf16| = {summary['max_abs_loss_diff']:.4f} "
          f"(loss {summary['first_loss']['fp32']:.3f} -> {summary['final_loss']['fp32']:.3f} in fp32)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"precision": rows, "ablation_float32_states": ablation, "loss_curves": summary, "settings": base | {
                k: getattr(args, k) for k in DEFAULTS}, "torch": torch.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
