"""Does the search find something better than a Transformer, and better than chance? Measured on real data.

One reversible DARTS search with the full op set on the Tatoeba en->de corpus (``--data``, default
``/work/shared/data/tatoeba_anki_deu``; the script says so and exits 0 when it is absent), then, through
the real pipeline (local Ray, Optuna, MLflow on SQLite, SentencePiece, sacreBLEU):

* the derived genotype, a standard Transformer and ``--random`` genotypes sampled uniformly from the same
  space (the paper's sampling baseline), each sized to one parameter budget (the Transformer's count at
  ``--hidden`` unless ``--target-params``) within 3%, and each retrained for the same number of steps
  with every seed of ``--seeds``;
* every model scored on validation (what decides) and test (what is reported) with the same beam.

Prints a table of validation/test BLEU mean ± std over seeds, parameters, the test BLEU difference to the
Transformer with sacreBLEU's paired bootstrap p-value (seeds pooled), and the difference to the mean of the
random genotypes. ``--json PATH`` writes::

    {"target_params": N, "records": [{"model", "kind", "seed", "params", "valid_bleu", "test_bleu"}],
     "summary": {"delta_vs_transformer", "p_value", "delta_vs_random"}, ...}

The defaults fit in about an hour on a 2-core CPU; on a bigger machine raise ``--search-steps``,
``--retrain-steps``, ``--hidden``, ``--layers`` and ``--cpus``.

    python experiments/bench_fidelity.py --json fidelity.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# Contended CPUs: spinning OpenMP threads collapse throughput on a shared machine (see bench_reversible).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DATA = "/work/shared/data/tatoeba_anki_deu"


def build_sweep(args, storage: str) -> dict:
    """The experiment as a sweep file would write it (see docs/sweep-reference.md)."""
    search_steps = args.search_steps
    return {
        "name": args.name, "seed": args.seed, "storage": storage,
        "data": {"kind": "corpus", "path": os.path.abspath(args.data), "src_lang": "en", "tgt_lang": "de",
                 "vocab_size": args.vocab, "spm_model_type": "unigram", "max_tokens": args.search_max_tokens,
                 "arch_fraction": 0.5, "max_len": 64},
        "search": {"steps": search_steps, "report_every": max(1, search_steps // 5),
                   "checkpoint_every": 2 * max(1, search_steps // 5), "valid_batches": 8,
                   "hidden": args.hidden, "splits": args.splits, "embed_dim": args.embed,
                   "encoder_layers": 2, "decoder_layers": 2, "cell_layers": 2, "share_alpha": True,
                   "heads": args.heads, "dropout": 0.1, "pooling": "max", "mode": "reversible",
                   "op_set": "full", "lr": 1.0e-3, "warmup_steps": max(1, search_steps // 5),
                   "alpha_lr": args.alpha_lr, "alpha_weight_decay": 1.0e-3,
                   "alpha_warmup_steps": args.alpha_warmup if args.alpha_warmup is not None else search_steps // 4},
        "num_samples": 1, "max_concurrent": args.cpus,
        "resources": {"cpu": 1, "gpu": 0},
        "objective": {"metric": "valid_loss", "mode": "min"},
        "retrain": {"top_k": 1, "steps": args.retrain_steps, "baseline": True, "random_genotypes": args.random,
                    "seeds": list(args.seeds), "hidden": args.hidden,
                    "size": {"match": "params", "params": args.target_params, "tolerance": 0.03},
                    "encoder_layers": args.layers, "decoder_layers": args.layers, "dropout": 0.1,
                    "lr": 1.0e-3, "warmup_steps": max(1, args.retrain_steps // 8), "max_tokens": args.max_tokens,
                    "beam": args.beam, "length_penalty": 1.0, "average_last": 1,
                    "validate_every": max(1, args.retrain_steps // 4)},
    }


def fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:5.2f} ± {std:4.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="corpus directory with train/valid/test .en/.de")
    p.add_argument("--out", default="results/fidelity", help="storage for the run (Ray, MLflow, Optuna)")
    p.add_argument("--name", default="fidelity")
    p.add_argument("--seed", type=int, default=0, help="search and sampling seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="retrain seeds (>= 2 for a std)")
    p.add_argument("--search-steps", type=int, default=250)
    p.add_argument("--retrain-steps", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=96, help="search width = retrain width (as in the paper)")
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--splits", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2, help="retrain encoder and decoder depth")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens per retrain batch")
    p.add_argument("--search-max-tokens", type=int, default=1024, help="tokens per search batch (θ and α each)")
    p.add_argument("--alpha-lr", type=float, default=3.0e-3)
    p.add_argument("--alpha-warmup", type=int, default=None, help="θ-only steps (default: a quarter)")
    p.add_argument("--random", type=int, default=2, help="random genotypes (the sampling baseline)")
    p.add_argument("--target-params", type=int, default=None,
                   help="parameter budget (default: the Transformer's count at --hidden)")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--cpus", type=int, default=2, help="trials at a time (one CPU each)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest interrupted run under --out (e.g. stage 2 with other --retrain-steps)")
    p.add_argument("--json", help="write the records and summary here")
    args = p.parse_args(argv)

    if not os.path.isfile(os.path.join(args.data, "train.en")):
        print(f"bench_fidelity: skipped: no corpus at {args.data} (train.en missing)")
        return 0

    from revsearch.errors import RevsearchError
    from revsearch.orchestration.pipeline import run_pipeline
    from revsearch.orchestration.ranking import summary
    from revsearch.orchestration.sweep import validate_sweep_dict

    storage = os.path.abspath(args.out)
    os.makedirs(storage, exist_ok=True)
    start = time.perf_counter()
    try:
        sweep = validate_sweep_dict(build_sweep(args, storage), source="bench_fidelity", base_dir=storage)
        result = run_pipeline(sweep, resume="latest" if args.resume else None,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
    except RevsearchError as err:
        print(f"bench_fidelity: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:   # revsearch.errors.Interrupted: the run is saved
        print(f"bench_fidelity: interrupted: {err}; continue with the same arguments and --resume", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    rows, seeds = result["rows"], result["seed_results"]
    target = max((r.target_params for r in rows), default=0)
    verdict = summary(rows)

    print(f"\nFidelity on {args.data}: search {args.search_steps} steps (full op set, d={args.hidden}), "
          f"retrain {args.retrain_steps} steps x seeds {args.seeds}, target {target:,} params, "
          f"wall {wall / 60:.1f} min")
    header = (f"{'model':<28} {'kind':<11} {'params':>10} {'vs target':>9} {'valid BLEU':>13} "
              f"{'test BLEU':>13} {'Δ vs Transformer (p)':>22}")
    print(header)
    print("-" * len(header))
    for r in rows:
        deviation = f"{100 * r.param_deviation:+.1f}%" if not math.isnan(r.param_deviation) else "—"
        delta = ("—" if math.isnan(r.delta_vs_baseline) else
                 f"{r.delta_vs_baseline:+.2f}" + (f" (p={r.p_value:.3f})" if not math.isnan(r.p_value) else ""))
        print(f"{r.label[:28]:<28} {r.kind:<11} {r.params:>10,} {deviation:>9} "
              f"{fmt(r.valid_bleu, r.valid_bleu_std):>13} {fmt(r.test_bleu, r.test_bleu_std):>13} {delta:>22}")
    for key in ("delta_vs_transformer", "p_value", "delta_vs_random"):
        if key in verdict:
            print(f"{key}: {verdict[key]:+.3f}")
    for r in rows:
        if r.kind != "baseline":
            print(f"  {r.label}: {r.genotype}")

    if args.json:
        payload = {
            "target_params": target,
            "records": [{"model": s.label, "kind": "transformer" if s.kind == "baseline" else s.kind,
                         "seed": s.seed, "params": s.params, "valid_bleu": s.valid_bleu,
                         "test_bleu": s.test_bleu} for s in sorted(seeds, key=lambda s: (s.label, s.seed))],
            "summary": {k: verdict.get(k) for k in ("delta_vs_transformer", "p_value", "delta_vs_random")},
            "rows": [{"model": r.label, "kind": r.kind, "params": r.params, "param_deviation": r.param_deviation,
                      "valid_bleu": r.valid_bleu, "valid_bleu_std": r.valid_bleu_std, "test_bleu": r.test_bleu,
                      "test_bleu_std": r.test_bleu_std, "delta_vs_transformer": r.delta_vs_baseline,
                      "p_value": r.p_value, "genotype": r.genotype} for r in rows],
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "wall_seconds": wall, "ranking": result["ranking_md"],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, allow_nan=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
