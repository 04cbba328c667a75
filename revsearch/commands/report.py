"""``revsearch report``: rebuild the ranking of a run from MLflow alone."""
from __future__ import annotations

import argparse


def build_rows(tracker, parent_run_id: str):
    """The ranking rows of a run, read from MLflow alone: each (candidate, seed) retrain's scores and
    hypotheses, the test references logged on the parent, and from the search trial that found a genotype
    the search time and the architecture description; aggregated exactly as the run's own ranking."""
    from ..orchestration.results import REFERENCES_FILE, artifact_lines, hypotheses_from_mlflow
    from ..orchestration.ranking import SeedResult, aggregate
    searches = {run.data.tags.get("revsearch.trial_id", ""): run
                for run in tracker.children(parent_run_id, kind="search")}
    results, described = [], {}
    for run in tracker.children(parent_run_id, kind="retrain"):
        m, tags, params = run.data.metrics, run.data.tags, run.data.params
        if "test_bleu" not in m or "valid_bleu" not in m:
            continue
        label = tags.get("revsearch.candidate", run.info.run_name)
        kind = tags.get("revsearch.model_kind", "")
        trial = tags.get("revsearch.search_trial_id", "")
        search = searches.get(trial)
        if kind == "baseline":
            ffn = params.get("model.ffn_dim")
            architecture = (f"Transformer e={params.get('model.embed_dim')} d={params.get('model.hidden')}"
                            + (f" ffn={ffn}" if ffn not in (None, "None") else ""))
        else:
            architecture = tags.get("revsearch.genotype_description", "") or (
                search.data.tags.get("revsearch.genotype", "") if search else "")
        described[label] = {"genotype": architecture, "search_trial": trial,
                            "search_seconds": float(search.data.metrics.get("search_seconds", 0.0)) if search else 0.0}
        results.append(SeedResult(
            label=label, kind=kind, seed=int(m.get("seed", tags.get("revsearch.seed", 0))),
            valid_bleu=m["valid_bleu"], test_bleu=m["test_bleu"], test_chrf=m.get("test_chrf", float("nan")),
            params=int(m.get("params", 0)), target_params=int(m.get("target_params", 0)),
            train_seconds=m.get("train_seconds", 0.0), mlflow_run_id=run.info.run_id,
            bleu_signature=tags.get("revsearch.bleu_signature", "")))
    references = artifact_lines(tracker, parent_run_id, REFERENCES_FILE)   # None: an older run
    return aggregate(results, described, hypotheses=hypotheses_from_mlflow(tracker) if references else None,
                     references=references)


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
    tracker = Tracker(uri, experiment, create=False)   # a report reads: it creates no database
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
                    "--run-id) and prints the ranking by validation BLEU (test BLEU reported beside it, mean ± std "
                    "over seeds, paired bootstrap vs the Transformer); --out also writes ranking.md/.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", help="sweep YAML (to find the tracking URI and experiment)")
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment")
    p.add_argument("--storage", help="results root (overrides the sweep file)")
    p.add_argument("--run-id", help="MLflow parent run id (default: the latest revsearch run)")
    p.add_argument("--out", help="directory for ranking.md and ranking.csv")
    p.set_defaults(handler=_run)
