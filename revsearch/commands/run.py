"""``revsearch run CONFIG.yaml``: the whole job (search -> retrain -> ranking -> registered best) and
``revsearch search CONFIG.yaml``: stage 1 alone."""
from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  revsearch run tune_configs/quickstart.yaml                 # local Ray on this machine
  revsearch run sweep.yaml --address auto                    # join a running Ray cluster
  revsearch run sweep.yaml --tracking-uri http://127.0.0.1:5000
  revsearch run sweep.yaml --resume                          # continue the latest interrupted run

Results go to <storage>/runs/<name>-<timestamp>/ (ranking.md, ranking.csv, Tune experiments, optuna.db).
Browse them with:  mlflow ui --backend-store-uri sqlite:///<storage>/mlflow.db  (binds 127.0.0.1)"""


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML file (see docs/sweep-reference.md)")
    p.add_argument("--address", help="Ray cluster address to join (default: $RAY_ADDRESS, else start a "
                                     "local Ray)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri; default "
                                          "sqlite under the storage directory)")
    p.add_argument("--storage", help="results root (overrides storage:)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue an interrupted run: the latest one of this sweep, or RUN_DIR")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true",
                      help="Ray Tune's and Ray's own output instead of the live view: trial tables, every "
                           "worker's log lines, Ray's INFO lines")
    talk.add_argument("--quiet", action="store_true",
                      help="no live view: only the one-line messages (stages, finished or failed trials, "
                           "results)")


def tracking_override(uri: str) -> str:
    """``--tracking-uri`` checked by the same rules as ``tracking.uri`` in a sweep file (a relative
    ``sqlite:///`` path resolves against the working directory)."""
    from ..orchestration.sweep import resolve_tracking_uri_option
    return resolve_tracking_uri_option(uri, "--tracking-uri")


def load(args):
    from ..orchestration.sweep import load_sweep
    sweep = load_sweep(args.config)
    if getattr(args, "tracking_uri", None):
        sweep.tracking.uri = tracking_override(args.tracking_uri)
    if getattr(args, "storage", None):
        sweep.storage = os.path.abspath(args.storage)
    return sweep


def ensure_storage(sweep, args=None) -> str:
    """Check that the results root is a writable directory or can be created as one, creating nothing
    (the run creates it once every check has passed); one ``ConfigError`` line naming ``--storage`` or
    the sweep file's ``storage`` otherwise. Returns the path."""
    from ..errors import ConfigError
    from ..orchestration.writable import creatable_problem
    path = sweep.storage
    where = "--storage" if getattr(args, "storage", None) else f"{sweep.source}: storage"
    if os.path.isfile(path):
        raise ConfigError(f"{where}: {path} is a file, expected a directory for the results")
    problem = creatable_problem(path)
    if problem:
        raise ConfigError(f"{where}: cannot write the results directory {path} ({problem})")
    return path


def preflight(sweep, args=None) -> None:
    """Checks before the pipeline creates a run directory or an MLflow run: the results directory is
    writable, ``--resume`` names a run, a Ray address (``--address`` / ``$RAY_ADDRESS``) has a head listening,
    and the tracking store is usable (server reachable, database driver installed, an SQLite database a
    file that can be created or opened, experiment readable). Nothing is created here. Each failure is
    one ``ConfigError`` line."""
    from ..errors import ConfigError
    from ..orchestration.pipeline import choose_run_dir
    from ..orchestration.ray_connect import check_ray_address, cluster_address
    from ..orchestration.tracking import check_tracking_store
    ensure_storage(sweep, args)
    choose_run_dir(sweep.storage, sweep.name, getattr(args, "resume", None))   # a bad --resume, first
    address, name = cluster_address(getattr(args, "address", None))
    if address:  # a TCP probe: before the tracking store is opened (or created) and before importing Ray
        check_ray_address(address, name)
    try:   # reads only: the database and the experiment are created by the run, after every check
        check_tracking_store(sweep.tracking_uri, sweep.experiment_name)
    except ConfigError as err:   # name where the URI came from: the option or the sweep file
        where = "--tracking-uri" if getattr(args, "tracking_uri", None) else f"{sweep.source}: tracking.uri"
        raise ConfigError(str(err).replace("tracking.uri", where, 1)) from None


def check_trials_fit(sweep, args) -> None:
    """``run`` / ``search`` on a local Ray: every trial must fit this machine (CPUs, GPUs, memory) before
    Ray starts; a cluster is checked against its largest node once joined (``run_pipeline``)."""
    from ..orchestration.capacity import check_local_capacity
    from ..orchestration.ray_connect import cluster_address
    if cluster_address(getattr(args, "address", None))[0] is None:
        check_local_capacity(sweep)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resume_command(args) -> str:
    """The command line that continues an interrupted run: the user's own options plus ``--resume``."""
    import shlex
    parts = ["revsearch", args.command, args.config]
    for option in ("address", "tracking_uri", "storage"):
        if getattr(args, option, None):
            parts += ["--" + option.replace("_", "-"), getattr(args, option)]
    parts.append("--resume")
    if args.resume not in (None, "", "latest"):
        parts.append(args.resume)
    return shlex.join(parts)


def console(args):
    """The console this invocation asked for (orchestration/live_view.py)."""
    from ..orchestration.live_view import ConsoleConfig
    return ConsoleConfig(verbose=bool(getattr(args, "verbose", False)), live=not getattr(args, "quiet", False))


def _pipeline(args, sweep, **kwargs):
    """``run_pipeline``; a Ctrl-C or SIGTERM (``Interrupted``, runs already ended KILLED) gets the command
    that continues the run added to its one line."""
    from ..errors import Interrupted
    from ..orchestration.pipeline import run_pipeline
    try:
        return run_pipeline(sweep, address=args.address, resume=args.resume, log=_log, console=console(args),
                            **kwargs)
    except Interrupted as err:
        if not str(err):   # stopped before the run existed: nothing to continue
            raise
        raise Interrupted(f"{err}; continue it with: {resume_command(args)}", err.signum) from None


def _run(args) -> int:
    sweep = load(args)
    preflight(sweep, args)
    check_trials_fit(sweep, args)
    result = _pipeline(args, sweep)
    best = result["best"]
    print(f"best: {best.label}  validation BLEU {best.valid_bleu:.2f} (test {best.test_bleu:.2f})  "
          f"(registered '{sweep.registered_model_name}' v{result['model_version']}, alias 'best')")
    print(f"ranking: {result['ranking_md']}")
    print(f"wall time: {result['wall_seconds']:.0f}s")
    return 0


def _search(args) -> int:
    sweep = load(args)
    preflight(sweep, args)
    check_trials_fit(sweep, args)
    result = _pipeline(args, sweep, search_only=True)
    for c in result["candidates"]:
        print(f"{c['label']}: {c.get('genotype_file', '')}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="search, retrain, rank and register: the whole job from a sweep YAML",
        description="Stage 1: Ray Tune + Optuna over the supernet search. Stage 2: retrain the top-k "
                    "distinct genotypes (and a Transformer baseline) and score them with sacreBLEU. Then a "
                    "ranking (Markdown + CSV) and the best model registered in MLflow with alias 'best'.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.set_defaults(handler=_run)
    s = subparsers.add_parser(
        "search", help="stage 1 only: the supernet search sweep; writes the chosen genotypes",
        description="Runs the Tune + Optuna search of a sweep YAML and writes the top-k distinct "
                    "genotypes as JSON (retrain them with `revsearch retrain`).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(s)
    s.set_defaults(handler=_search)
