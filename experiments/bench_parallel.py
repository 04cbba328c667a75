"""Data-parallel search and retraining on this machine (GitHub issue 14, item 7).

* ``throughput``: tokens/s of search steps (first order, α step + θ step; the weight and architecture
  batches' target tokens) and retrain steps of a reversible model, float32, dropout on, for one process
  with 2 torch threads vs 2 gloo worker processes with 1 thread each (``learning/data_parallel.py``: each
  worker computes half of every global batch, gradients all-reduced token-weighted). The same global
  batches in both; timed after warm-up steps. Also 1 process x 1 thread, the base of the scaling
  efficiency: tokens/s of (workers x threads) cores / (workers x threads x tokens/s on 1 core).
* ``equality``: float64, dropout on, 3 steps: the largest relative difference of any parameter tensor
  (α and θ) between each of 2 gloo workers and one process computing both shards of every global batch
  (search first order, second order, retrain).
* ``precision``: bf16 vs fp32 reconstruction error and step time, read from ``bench_precision.py``'s JSON
  (``--precision-json``; run with ``--quick`` when that file does not exist).

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/bench_parallel.py --json results/bench_parallel.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort timings on a shared box

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from revsearch.learning.data_parallel import DataParallel  # noqa: E402
from revsearch.search import (BilevelSearch, SearchConfig, Supernet, SupernetConfig,  # noqa: E402
                              build_derived_model, uniform_genotype)
from revsearch.search.loop import SearchData, SearchLoop  # noqa: E402
from revsearch.train.trainer import TrainConfig, Trainer  # noqa: E402
from toy_tasks import reversal_pairs  # noqa: E402  (experiments/ is the script's folder, on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = dict(hidden=128, embed_dim=64, layers=2, vocab=500, max_tokens=1024, sentences=400, max_len=24,
                warmup=2, steps=8)
QUICK = dict(hidden=16, embed_dim=8, layers=1, vocab=24, max_tokens=64, sentences=40, max_len=7, warmup=1, steps=2)


def supernet_config(s, dropout=0.1) -> SupernetConfig:
    return SupernetConfig(vocab_size=s["vocab"], hidden=s["hidden"], splits=2, embed_dim=s["embed_dim"],
                          encoder_layers=s["layers"], decoder_layers=s["layers"], heads=2, dropout=dropout)


# --------------------------------------------------------------------------------------- one run
def search_run(s, parallel, steps, second_order=False, dtype=torch.float32, timed_from=None):
    torch.manual_seed(0)
    net = Supernet(supernet_config(s)).to(dtype)
    search = BilevelSearch(net, SearchConfig(lr=1e-3, warmup_steps=4, clip_norm=1.0, second_order=second_order),
                           parallel=parallel)
    n = s["sentences"]
    data = SearchData(reversal_pairs(n, 1, s["vocab"], s["max_len"]), reversal_pairs(n, 2, s["vocab"], s["max_len"]),
                      reversal_pairs(8, 3, s["vocab"], s["max_len"]), max_tokens=s["max_tokens"], seed=1)
    loop = SearchLoop(search, data, valid_batches=1)
    tokens, seconds = 0, 0.0
    for step in range(steps):
        if parallel is None:
            w, a = loop.weight_stream.next(), loop.arch_stream.next()
            batches = (w.src, w.tgt_in, w.tgt_out), (a.src, a.tgt_in, a.tgt_out)
            step_tokens = w.num_tokens + a.num_tokens
        else:
            batches = (loop.weight_stream.next_shards(parallel.num_shards, parallel.local_shards),
                       loop.arch_stream.next_shards(parallel.num_shards, parallel.local_shards))
        parallel is not None and parallel.sync.barrier()
        start = time.perf_counter()
        search.step(*batches)
        elapsed = time.perf_counter() - start
        if parallel is not None:
            step_tokens = search.step_tokens["weight"] + search.step_tokens["arch"]
        if timed_from is not None and step >= timed_from:
            tokens, seconds = tokens + step_tokens, seconds + elapsed
    return {"alpha": [a.detach().clone() for a in net.arch_parameters()],
            "theta": [w.detach().clone() for w in net.weight_parameters()],
            "tokens_per_s": tokens / seconds if seconds else 0.0}


def retrain_run(s, parallel, steps, dtype=torch.float32, timed_from=None):
    torch.manual_seed(0)
    config = supernet_config(s)
    model = build_derived_model(uniform_genotype(2, "self_attn", "ffn", layers=s["layers"]), config).to(dtype)
    windows = []
    train_config = TrainConfig(lr=1e-3, warmup_steps=4, max_tokens=s["max_tokens"], max_steps=steps, valid_every=0,
                               log_every=1, quiet=True, restore_best=False, clip_norm=1.0, seed=3)
    trainer = Trainer(model, reversal_pairs(s["sentences"], 4, s["vocab"], s["max_len"]),
                      reversal_pairs(4, 5, s["vocab"], s["max_len"]),
                      train_config, parallel=parallel, on_report=lambda step, m: windows.append((step, m)))
    trainer.train()
    rates = [m["tokens_per_s"] for step, m in windows if "tokens_per_s" in m and timed_from is not None
             and step > timed_from]
    # per-step tokens/s of the timed steps, combined as total tokens / total time (harmonic mean)
    tokens_per_s = len(rates) / sum(1.0 / r for r in rates) if rates else 0.0
    return {"theta": [p.detach().clone() for p in model.parameters()], "tokens_per_s": tokens_per_s}


def worker(rank, init_file, out_dir, settings, quick_settings, threads):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        s, q = settings, quick_settings
        total = s["warmup"] + s["steps"]
        results["search_throughput"] = search_run(s, DataParallel.worker(7), total, timed_from=s["warmup"])["tokens_per_s"]
        results["retrain_throughput"] = retrain_run(s, DataParallel.worker(7), total, timed_from=s["warmup"])["tokens_per_s"]
        for name, run in equality_runs(q).items():
            results[name] = run(DataParallel.worker(7))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def equality_runs(q):
    return {"search": lambda par: search_run(q, par, 3, dtype=torch.float64),
            "search_second_order": lambda par: search_run(q, par, 3, second_order=True, dtype=torch.float64),
            "retrain": lambda par: retrain_run(q, par, 3, dtype=torch.float64)}


def max_rel_err(got, want):
    errs = []
    for group in ("alpha", "theta"):
        for g, w in zip(got.get(group, []), want.get(group, [])):
            errs.append(((g - w).norm() / w.norm().clamp_min(1e-300)).item())
    return max(errs)


def precision_rows(path):
    if not os.path.isfile(path):
        spec = importlib.util.spec_from_file_location("bench_precision", os.path.join(HERE, "bench_precision.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        path = os.path.join(tempfile.mkdtemp(), "bench_precision.json")
        module.main(["--quick", "--json", path])
    with open(path) as f:
        rows = json.load(f)["precision"]
    return [{"dtype": r["dtype"], "recon_err": r["recon_err"], "step_seconds": r["step_seconds"]} for r in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--json", metavar="PATH", help="write {equality, throughput, precision} here")
    parser.add_argument("--precision-json", default=os.path.join(os.path.dirname(HERE), "results",
                                                                 "bench_precision.json"),
                        help="bench_precision.py's output to take the precision rows from")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else DEFAULTS
    total = s["warmup"] + s["steps"]

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "init"), tmp, s, QUICK, 1), nprocs=2, join=True)
        workers = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]

    single = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        single[threads] = {"search": search_run(s, None, total, timed_from=s["warmup"])["tokens_per_s"],
                           "retrain": retrain_run(s, None, total, timed_from=s["warmup"])["tokens_per_s"]}
    throughput = []
    for what in ("search", "retrain"):
        for threads in (1, 2):
            throughput.append({"what": what, "workers": 1, "threads": threads, "tokens_per_s": single[threads][what]})
        throughput.append({"what": what, "workers": 2, "threads": 1,
                           "tokens_per_s": workers[0][f"{what}_throughput"]})
    torch.set_num_threads(1)
    equality = []
    for name, run in equality_runs(QUICK).items():
        reference = run(DataParallel.reference(2, 7))
        equality.append({"what": name, "workers": 2,
                         "max_rel_err": max(max_rel_err(w[name], reference) for w in workers)})
    precision = precision_rows(args.precision_json)

    print(f"throughput: supernet/derived model hidden {s['hidden']}, {s['layers']}+{s['layers']} layers, "
          f"global batch {s['max_tokens']} tokens, {s['steps']} timed steps after {s['warmup']}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    # vs 1x2: the same two cores used by threads instead of workers; scaling efficiency: tokens/s of
    # 2 workers over twice those of 1 worker on 1 core (1.0 = perfect linear scaling)
    print(f"{'what':<9} {'workers':>7} {'threads':>7} {'tokens/s':>10} {'vs 1x2':>8} {'scaling eff.':>12}")
    for r in throughput:
        base2, base1 = single[2][r["what"]], single[1][r["what"]]
        eff = r["tokens_per_s"] / (r["workers"] * r["threads"] * base1) if base1 else float("nan")
        print(f"{r['what']:<9} {r['workers']:>7} {r['threads']:>7} {r['tokens_per_s']:>10.0f} "
              f"{r['tokens_per_s'] / base2 if base2 else float('nan'):>7.2f}x {eff:>12.2f}")
    print("\nequality (float64, dropout 0.1, 3 steps, 2 gloo workers vs 1 process):")
    for r in equality:
        print(f"{r['what']:<20} max rel err {r['max_rel_err']:.2e}")
    print("\nprecision (from bench_precision.py):")
    for r in precision:
        print(f"{r['dtype']:<5} recon rel err {r['recon_err']:.3e}  step {r['step_seconds']:.3f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"equality": equality, "throughput": throughput, "precision": precision,
                       "settings": s, "torch": torch.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
