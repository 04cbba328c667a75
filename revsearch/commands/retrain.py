"""``revsearch retrain GENOTYPE.json --config SWEEP.yaml``: train a derived model (or the Transformer
baseline) from scratch outside of Tune, score it with sacreBLEU, track it in MLflow."""
from __future__ import annotations

import argparse
import os
import sys

from .arg_types import positive_int
from .progress import TrainingProgress


def genotype_trial_params(sweep, genotype) -> dict:
    """The hand-made search-trial parameters of a genotype file (``retrain_candidates(partial=True)``):
    its splits and pooling, and the search width for its split count. ``--hidden`` is not among them: it
    is the retrain width (``retrain.hidden``) and is never checked against the search space; a space that
    derives ``hidden`` from the split count alone computes it from its expression. One that derives it
    from parameters a genotype file does not know (``splits * per_split_width``) gets the search width
    per split times the genotype's splits, so a 3-split genotype fits a sweep whose ``search.hidden``
    is sized for 2 splits."""
    from ..orchestration.space_expr import expr_names
    width = max(1, sweep.search.hidden // sweep.search.splits)
    params = {"splits": genotype.splits, "pooling": genotype.pooling}
    hidden_param = sweep.space.get("hidden")
    computable = (hidden_param is not None and not hidden_param.sampled
                  and set(expr_names(hidden_param.expr)) <= set(params))
    if not computable:
        params["hidden"] = genotype.splits * width
    return params


def validation_printer(bar):
    """``run_retrain``'s ``report``: validation results as lines above the progress bar (the training
    reports are what the bar already shows)."""
    def report(metrics) -> None:
        if "valid_nll" in metrics:
            bar.log(f"{bar.label}: step {metrics['step']} | valid nll {metrics['valid_nll']:.3f} | "
                    f"best {metrics.get('best_valid_nll', float('nan')):.3f}")
    return report


def _run(args) -> int:
    from ..orchestration.data_prep import prepare_data
    from ..orchestration.candidates import retrain_candidates
    from ..orchestration.trainables import run_retrain
    from ..search import Genotype
    from .run import load, preflight

    sweep = load(args)
    args.resume = None
    preflight(sweep, args)
    genotype = Genotype.load(args.genotype)
    if args.steps:
        sweep.retrain.steps = args.steps
    if args.hidden:
        sweep.retrain.hidden = args.hidden
    sweep.retrain.random_genotypes = 0   # one genotype (and --baseline), not the sampling baseline of a run
    sweep.retrain.baseline = bool(args.baseline)   # the size target is the Transformer's count either way
    params = genotype_trial_params(sweep, genotype)
    chosen = [{"rank_in_search": 1, "trial_id": "manual", "config": params, "genotype": genotype.to_json(),
               "genotype_key": genotype.key(), "search_run_id": "", "search_seconds": 0.0}]
    candidates = retrain_candidates(sweep, chosen, partial=True)
    derived = next(c for c in candidates if c["kind"] == "derived")
    derived["label"] = args.label or os.path.splitext(os.path.basename(args.genotype))[0]
    if not args.baseline:
        candidates = [derived]
    d = sweep.data
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    prepared = prepare_data(d.kind, sweep.storage, synthetic=d.synthetic, path=d.path, src_lang=d.src_lang,
                            tgt_lang=d.tgt_lang, pair=d.pair, log=log, max_words=d.max_len)
    from ..orchestration.tracking import KIND_TAG, Tracker
    tracker = Tracker(sweep.tracking_uri, sweep.experiment_name,
                      artifact_root=os.path.join(sweep.storage, "mlartifacts"))
    import time
    run_dir = os.path.join(sweep.storage, "retrain-cli", time.strftime("%Y%m%d-%H%M%S"))
    from ..interrupts import shielded
    with shielded(deliver=False) as held:   # a Ctrl-C is raised inside the try, which ends the run
        parent = tracker.start_run(f"retrain {derived['label']}", {KIND_TAG: "retrain-cli"})
    context = {"tracking_uri": sweep.tracking_uri, "experiment": sweep.experiment_name,
               "artifact_root": os.path.join(sweep.storage, "mlartifacts"), "parent_run_id": parent,
               "run_dir": run_dir, "seed": sweep.seed, "threads": args.threads,
               "prepared": prepared.to_dict(), "retrain": sweep.retrain.to_dict(),
               "gpu": sweep.resources.gpu}   # resources.gpu > 0 and CUDA here: train and decode on the GPU
    status = "FAILED"
    try:
        held.deliver()
        for c in candidates:
            retrain = sweep.retrain
            bar = TrainingProgress(c["label"], total_steps=retrain.steps,
                                   budget_s=retrain.budget_minutes * 60 if retrain.budget_minutes else None)
            try:
                final = run_retrain(c, context, validation_printer(bar), on_step=bar)
            finally:
                bar.close()
            print(f"{c['label']}: BLEU {final['test_bleu']:.2f} chrF {final['test_chrf']:.2f} "
                  f"params {final['params']:,} ({final['bleu_signature']})")
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: this run and the retrain it was in end KILLED
        status = "KILLED"
        with shielded():
            tracker.end_running_children(parent, "KILLED")
        raise
    finally:
        with shielded():
            tracker.end_run(parent, status)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "retrain", help="retrain a genotype from scratch and score it with sacreBLEU (no Tune)",
        description="Builds the derived encoder-decoder of GENOTYPE.json (cell stacked to the retrain "
                    "depth of the sweep file), trains it with the sweep's retrain settings on the sweep's "
                    "data, scores the test set with sacreBLEU and logs everything to MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("genotype", help="genotype JSON written by a search (runs/.../genotypes/*.json)")
    p.add_argument("--config", required=True, help="sweep YAML giving data, retrain and tracking settings")
    p.add_argument("--steps", type=int, help="override retrain.steps")
    p.add_argument("--hidden", type=int, help="override retrain.hidden (model width)")
    p.add_argument("--label", help="name of the MLflow run (default: the genotype file name)")
    p.add_argument("--baseline", action="store_true", help="also train the Transformer baseline")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides the sweep file)")
    p.add_argument("--storage", help="results root (overrides the sweep file)")
    p.set_defaults(handler=_run)
