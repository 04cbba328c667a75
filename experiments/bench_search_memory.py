"""Peak memory and time of one full DARTS search step (alpha step + theta step, BilevelSearch.step) for the
plain and the reversible supernet across hidden sizes, and the largest hidden size each fits under a
memory budget (GitHub issue 3, item 8). CPU-only.

Method: every (mode, hidden) point runs in a fresh child process (this script with ``--child``) that
builds the supernet, the two optimizers and two batches (weight part, architecture part), then runs
``--warmup`` + ``--steps`` search steps. Memory is the child's *process peak RSS*
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``): parameters, gradients, Adam state, activations, the
torch runtime, everything, because that is what an out-of-memory kill sees; it is what is compared with
the budget. ``step increment`` = peak RSS - RSS just before the first step (what the steps add on top of
the built model). The parent polls the child's RSS every 50 ms and kills it once it passes the budget
("over budget"). Hidden sizes are swept upward per mode until the first point that does not fit; the
largest that fits is the last fitting point (``--refine`` bisects the gap in steps of 16 * splits).
Step time is the median of ``--steps`` timed steps after the warm-up while both modes are in the sweep
(``--solo-steps`` once one mode is left: big sizes are slow on a CPU). Modes run alternately at each
hidden size so that load from other processes hits both alike, and children run with
OMP_WAIT_POLICY=PASSIVE unless it is set (spinning OpenMP threads collapse under load). The default
sweep steps by x1.5 / x1.33 (64, 96, 128, 192, 256, ...), so each max is within that factor below the
true limit; ``--refine`` or ``--hiddens`` narrow it. The default run takes about 15 minutes on 2 idle
cores (longer on a shared machine).

Settings (the paper's search setting scaled to CPU): full op set (13 encoder / 14 decoder ops), splits 2
(decoder 3), embed 256, 6 + 6 layers built from a 2-layer searched cell (alpha shared, theta per layer),
2048 tokens per side (32 sentences x 64 tokens), vocab 8000, dropout 0.1, first-order DARTS.

    PYTHONPATH=. python experiments/bench_search_memory.py --json results/bench_search_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("plain", "reversible")
# x1.5 / x1.33 alternately: 2^k and 1.5 * 2^k, all divisible by 2, 3 and 32 (splits x 16)
SWEEP = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
QUICK = dict(hiddens=[32, 64], layers=2, tokens=128, length=16, vocab=256, embed_dim=32, steps=1,
             solo_steps=1, warmup=0, budget_gib=3.0, threads=1)
POLL_SECONDS = 0.05
GIB = 2 ** 30
BOS, EOS = 2, 3
METHOD = ("peak RSS (getrusage ru_maxrss) of a fresh child process per point, torch import + supernet + "
          "optimizers + {warmup} warm-up and {steps} timed BilevelSearch.step calls (alpha then theta); "
          "step increment = peak - RSS before the first step; the parent polls RSS every 50 ms and kills "
          "a child above the budget; step time = median of the timed steps; children run with "
          "OMP_WAIT_POLICY={omp} (idle OpenMP threads sleep instead of spinning: on a shared machine "
          "spinning made steps 3x slower)")


# --------------------------------------------------------------------------------------------------
# child: one (mode, hidden) point
# --------------------------------------------------------------------------------------------------
def make_batch(sentences: int, length: int, vocab: int, seed: int):
    """(src, tgt_in, tgt_out), every sentence full length (no padding): src ends with eos, tgt_in starts
    with bos, tgt_out is tgt_in shifted left with eos at the end."""
    import torch
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (sentences, length), generator=g)
    src[:, -1] = EOS
    body = torch.randint(4, vocab, (sentences, length - 1), generator=g)
    tgt_in = torch.cat([torch.full((sentences, 1), BOS), body], dim=1)
    tgt_out = torch.cat([body, torch.full((sentences, 1), EOS)], dim=1)
    return src, tgt_in, tgt_out


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> int:
    import gc

    import torch

    from revsearch.search.bilevel import BilevelSearch, SearchConfig
    from revsearch.search.supernet import Supernet, SupernetConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = SupernetConfig(vocab_size=args.vocab, hidden=args.hidden, splits=args.splits,
                            embed_dim=args.embed_dim, encoder_layers=args.layers,
                            decoder_layers=args.layers, dropout=args.dropout,
                            cell_layers=args.cell_layers, share_alpha=True, max_len=max(1024, args.length),
                            mode=args.mode)
    net = Supernet(config)
    net.set_mode(args.mode)
    search = BilevelSearch(net, SearchConfig())
    sentences = max(1, args.tokens // args.length)
    weight_batch = make_batch(sentences, args.length, args.vocab, args.seed + 1)
    arch_batch = make_batch(sentences, args.length, args.vocab, args.seed + 2)
    gc.collect()
    rss_before = current_rss()
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        out = search.step(weight_batch, arch_batch)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {"mode": args.mode, "hidden": args.hidden,
              "parameters": sum(p.numel() for p in net.parameters()),
              "rss_before_step_bytes": rss_before, "peak_rss_bytes": peak,
              "step_increment_bytes": peak - rss_before,
              "step_seconds": statistics.median(times) if times else None,
              "train_loss": out["train_loss"]}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# parent: spawn, watch, sweep
# --------------------------------------------------------------------------------------------------
CHILD_FLAGS = ("splits", "layers", "cell_layers", "embed_dim", "tokens", "length", "vocab", "dropout",
               "steps", "warmup", "threads", "seed")


def child_rss(proc) -> int:
    """RSS of the child process (bytes), 0 once it is gone."""
    try:
        with open(f"/proc/{proc.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def measure(mode: str, hidden: int, args, steps: int) -> dict:
    """Run one child; return its record (``fits`` False when killed over budget or peak > budget)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode, "--hidden", str(hidden)]
    for name in CHILD_FLAGS:
        value = steps if name == "steps" else getattr(args, name)
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    budget = int(args.budget_gib * GIB)
    record = {"mode": mode, "hidden": hidden, "peak_rss_bytes": None, "step_increment_bytes": None,
              "step_seconds": None, "timed_steps": steps, "fits": False, "status": "ok"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    observed = 0
    try:
        while proc.poll() is None:
            observed = max(observed, child_rss(proc))
            if observed > budget:
                record["status"] = "over budget"
                break
            if args.timeout and time.monotonic() - start > args.timeout:
                record["status"] = "timeout"
                break
            time.sleep(POLL_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate()
    record["wall_seconds"] = time.monotonic() - start
    if record["status"] != "ok":
        record["peak_rss_bytes"] = observed  # a lower bound: the child was stopped here
        return record
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        record["status"] = f"failed (exit {proc.returncode})"
        record["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        record["peak_rss_bytes"] = observed or None
        return record
    result = json.loads(lines[-1][len("RESULT "):])
    record.update({k: result[k] for k in ("peak_rss_bytes", "step_increment_bytes", "step_seconds",
                                          "rss_before_step_bytes", "parameters")})
    record["fits"] = result["peak_rss_bytes"] <= budget
    if not record["fits"]:
        record["status"] = "over budget"  # the 50 ms poll missed the spike; ru_maxrss did not
    return record


def progress(record) -> None:
    peak = record["peak_rss_bytes"]
    peak_text = f"{peak / GIB:.2f} GiB" if peak else "-"
    step = record["step_seconds"]
    print(f"  {record['mode']:>10} d={record['hidden']:<5} peak {peak_text:>10}  "
          f"step {f'{step:.2f}s' if step else '-':>8}  {record['status']}  "
          f"({record['wall_seconds']:.0f}s wall)", file=sys.stderr, flush=True)


def sweep(args):
    """Alternate modes per hidden size; a mode stops at its first point that does not fit. A point is
    timed over ``--steps`` steps while the other mode is still in the sweep (so the time ratio can be
    read there) and over ``--solo-steps`` once it runs alone (bounds the run time at large sizes)."""
    records, active, last_fit, first_fail, stopped = [], list(MODES), {}, {}, set()
    for hidden in args.hiddens:
        if not active:
            break
        for mode in list(active):
            steps = args.steps if len(active) == len(MODES) else args.solo_steps
            record = measure(mode, hidden, args, steps)
            records.append(record)
            progress(record)
            if record["fits"]:
                last_fit[mode] = hidden
                continue
            if record["status"] == "over budget":
                first_fail[mode] = hidden
            else:  # timeout or crash: says nothing about memory, so the max is only a lower bound
                stopped.add(mode)
            active.remove(mode)
    if args.refine:
        step = 16 * args.splits
        for mode in MODES:
            lo, hi = last_fit.get(mode, 0), first_fail.get(mode)
            while hi is not None and hi - lo > step:
                mid = lo + max(1, (hi - lo) // (2 * step)) * step
                record = measure(mode, mid, args, args.solo_steps)
                record["refine"] = True
                records.append(record)
                progress(record)
                if record["fits"]:
                    lo = last_fit[mode] = mid
                elif record["status"] == "over budget":
                    hi = first_fail[mode] = mid
                else:
                    break
    max_hidden = {mode: last_fit.get(mode, 0) for mode in MODES}
    capped = {mode: mode not in first_fail or mode in stopped for mode in MODES}
    return records, max_hidden, capped


def table(records) -> str:
    lines = [f"{'hidden':>6} {'mode':>10} {'params M':>8} {'peak RSS GiB':>12} {'step incr GiB':>13} "
             f"{'step s':>7} {'n':>2} {'rev/plain time':>14} {'fits':>5}  status"]
    times = {(r["mode"], r["hidden"]): r["step_seconds"] for r in records}
    for r in sorted(records, key=lambda r: (r["hidden"], MODES.index(r["mode"]))):
        ratio = "-"
        plain, rev = times.get(("plain", r["hidden"])), times.get(("reversible", r["hidden"]))
        if r["mode"] == "reversible" and plain and rev:
            ratio = f"{rev / plain:.2f}"
        params = f"{r['parameters'] / 1e6:.1f}" if r.get("parameters") else "-"
        peak = gib(r["peak_rss_bytes"]) if r["status"] == "ok" else (
            f">{r['peak_rss_bytes'] / GIB:.3f}" if r["peak_rss_bytes"] else "-")
        step = f"{r['step_seconds']:.2f}" if r["step_seconds"] else "-"
        lines.append(f"{r['hidden']:>6} {r['mode']:>10} {params:>8} {peak:>12} "
                     f"{gib(r['step_increment_bytes']):>13} {step:>7} {r['timed_steps']:>2} {ratio:>14} "
                     f"{'yes' if r['fits'] else 'no':>5}  {r['status']}")
    return "\n".join(lines)


def gib(value) -> str:
    return f"{value / GIB:.3f}" if value else "-"


def time_ratios(records):
    """reversible / plain step time at every hidden size where both fit."""
    times = {(r["mode"], r["hidden"]): r["step_seconds"] for r in records if r["fits"]}
    return {h: times[("reversible", h)] / times[("plain", h)]
            for (mode, h) in sorted(times) if mode == "plain" and ("reversible", h) in times}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-gib", type=float, default=4.0,
                        help="memory budget (GiB) the process peak RSS must stay under (default 4)")
    parser.add_argument("--hiddens", type=int, nargs="+", default=list(SWEEP),
                        help="hidden sizes to sweep upward (default %(default)s)")
    parser.add_argument("--refine", action="store_true",
                        help="bisect between the last fitting and the first failing size (step 16*splits)")
    parser.add_argument("--splits", type=int, default=2, help="encoder splits n (decoder n+1)")
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder depth (default 6)")
    parser.add_argument("--cell-layers", type=int, default=2,
                        help="searched layers s; alpha shared cyclically over the depth (default 2)")
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per side per batch (default 2048)")
    parser.add_argument("--length", type=int, default=64, help="tokens per sentence (default 64)")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed search steps per point while both modes fit (median; default 3)")
    parser.add_argument("--solo-steps", type=int, default=1,
                        help="timed steps once only one mode is left in the sweep (default 1)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed search steps first (default 1; the peak needs >= 2 steps in all, "
                             "since Adam's state exists only from the end of the first step)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds before a child is stopped (0 = none); stops that mode's sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model, hidden 32 and 64, one step, one thread (for the tests)")
    parser.add_argument("--json", metavar="PATH", help="write the budget, method, max_hidden and records")
    # internal: one measurement point
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv or sys.argv[1:])
                    if a.startswith("--"))
        for name, value in QUICK.items():
            if name not in given:
                setattr(args, name, value)
    if min(args.steps, args.solo_steps) < 1:
        parser.error("--steps and --solo-steps must be >= 1")
    bad = [h for h in args.hiddens if h % args.splits]
    if bad:
        parser.error(f"hidden sizes {bad} are not divisible by --splits {args.splits}")
    args.hiddens = sorted(set(args.hiddens))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    budget = int(args.budget_gib * GIB)
    steps = str(args.steps)
    if args.solo_steps != args.steps:
        steps += f" ({args.solo_steps} once one mode is left)"
    method = METHOD.format(warmup=args.warmup, steps=steps,
                           omp=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    sentences = max(1, args.tokens // args.length)
    print(f"budget {args.budget_gib:g} GiB; splits {args.splits}/{args.splits + 1}, layers {args.layers} "
          f"(cell {args.cell_layers}, alpha shared), embed {args.embed_dim}, "
          f"{sentences}x{args.length} tokens per side, vocab {args.vocab}, dropout {args.dropout}, "
          f"{args.threads} threads, full op set\nmethod: {method}", file=sys.stderr, flush=True)
    records, max_hidden, capped = sweep(args)
    print(table(records))
    print(f"method: {method}")
    for mode in MODES:
        note = " (a lower bound: no size went over budget)" if capped[mode] else ""
        print(f"max hidden under {args.budget_gib:g} GiB, {mode}: {max_hidden[mode]}{note}")
    if max_hidden["plain"]:
        print(f"max hidden reversible / plain: {max_hidden['reversible'] / max_hidden['plain']:.2f}")
    ratios = time_ratios(records)
    if ratios:
        print("step time reversible / plain: " + ", ".join(f"d={h}: {r:.2f}" for h, r in ratios.items())
              + f" (median {statistics.median(ratios.values()):.2f})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k not in ("child", "mode", "hidden", "json")}
        with open(args.json, "w") as f:
            json.dump({"budget_bytes": budget, "method": method, "max_hidden": max_hidden,
                       "max_hidden_capped": capped,
                       "step_time_ratio": {str(h): r for h, r in ratios.items()},
                       "config": config, "records": records}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
