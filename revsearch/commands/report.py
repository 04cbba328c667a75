"""``revsearch report``: rebuild the ranking of a run from MLflow alone."""
from __future__ import annotations

import argparse
import os


def build_rows(tracker, parent_run_id: str):
    """The ranking rows of a run, read from MLflow: each retrain's scores, and from the search trial that
    found its genotype the search time and the architecture description (as the run's own ranking)."""
    from ..orchestration.ranking import RankRow, rank
    searches = {run.data.tags.get("revsearch.trial_id", ""): run
                for run in tracker.children(parent_run_id, kind="search")}
    rows = []
    for run in tracker.children(parent_run_id, kind="retrain"):
        m, tags, params = run.data.metrics, run.data.tags, run.data.params
        if "test_bleu" not in m:
            continue
        trial = tags.get("revsearch.search_trial_id", "")
        search = searches.get(trial)
        if tags.get("revsearch.model_kind") == "derived":
            architecture = search.data.tags.get("revsearch.genotype", "") if search else ""
        else:
            architecture = f"Transformer e={params.get('model.embed_dim')} d={params.get('model.hidden')}"
        rows.append(RankRow(
            label=tags.get("revsearch.candidate", run.info.run_name), kind=tags.get("revsearch.model_kind", ""),
            bleu=m["test_bleu"], chrf=m.get("test_chrf", float("nan")), params=int(m.get("params", 0)),
            search_seconds=float(search.data.metrics.get("search_seconds", 0.0)) if search else 0.0,
            retrain_seconds=m.get("train_seconds", 0.0), genotype=architecture, search_trial=trial,
            mlflow_run_id=run.info.run_id, bleu_signature=tags.get("revsearch.bleu_signature", "")))
    return rank(rows)


def _run(args) -> int:
    from ..errors import RevsearchError
    from ..orchestration.ranking import to_markdown, write_ranking
    from ..orchestration.tracking import KIND_TAG, Tracker
    if args.config:
        from .run import load
        args.resume = None
        sweep = load(args)
        uri, experiment = sweep.tracking_uri, sweep.experiment_name
    else:
        if not (args.tracking_uri and args.experiment):
            raise RevsearchError("give a sweep CONFIG, or --tracking-uri and --experiment")
        uri, experiment = args.tracking_uri, args.experiment
    tracker = Tracker(uri, experiment)
    parent = args.run_id
    if not parent:
        runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'",
                                          order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise RevsearchError(f"experiment '{experiment}' at {uri} has no revsearch run")
        parent = runs[0].info.run_id
    rows = build_rows(tracker, parent)
    if not rows:
        raise RevsearchError(f"run {parent} has no scored retrain yet")
    print(to_markdown(rows, title=f"ranking of MLflow run {parent}"))
    if args.out:
        md, csv_path = write_ranking(rows, args.out, title=f"ranking of MLflow run {parent}")
        print(f"wrote {md} and {csv_path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="rebuild the ranking of a run from MLflow",
        description="Reads the retrain runs under a sweep's MLflow parent run (the latest one unless "
                    "--run-id) and prints the ranking by test BLEU; --out also writes ranking.md/.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", help="sweep YAML (to find the tracking URI and experiment)")
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment")
    p.add_argument("--storage", help="results root (overrides the sweep file)")
    p.add_argument("--run-id", help="MLflow parent run id (default: the latest revsearch run)")
    p.add_argument("--out", help="directory for ranking.md and ranking.csv")
    p.set_defaults(handler=_run)
