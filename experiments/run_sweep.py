"""Run a sweep on a running Ray cluster: the script behind `ray submit` and `ray job submit`.

    ray submit tune_configs/cluster.yaml experiments/run_sweep.py -- tune_configs/wmt14_en_de.yaml \\
        --storage /shared/revsearch --tracking-uri http://$HEAD_PRIVATE_IP:5000
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python experiments/run_sweep.py tune_configs/wmt14_en_de.yaml --storage /shared/revsearch

`ray submit` copies only this file to the head node's home directory and runs it there (working directory
~), so it imports nothing from beside itself: the package is the install made by the cluster's
setup_commands (the repository shipped to ~/revsearch by file_mounts). A sweep path that is not found
relative to the working directory is looked up in the repository: $REVSEARCH_REPO, the repository the
installed revsearch package lives in, the repository around this script, then ~/revsearch.

It joins the running cluster (--address, default $RAY_ADDRESS or "auto") and runs
`revsearch run SWEEP --address ADDRESS ...`; every other option (--storage, --tracking-uri, --resume,
--quiet) goes to `revsearch run` unchanged (see `revsearch run --help`). On a cluster of several nodes,
--storage must be a directory shared by all of them (NFS, EFS) and --tracking-uri an MLflow server they
all reach: docs/cluster.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Iterator, List, Optional, Tuple

PROG = "run_sweep.py"


def _is_repo(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "revsearch", "__init__.py"))


def repo_candidates() -> Iterator[str]:
    """Directories that may hold the revsearch repository, most specific first."""
    if os.environ.get("REVSEARCH_REPO"):
        yield os.path.expanduser(os.environ["REVSEARCH_REPO"])
    try:
        spec = importlib.util.find_spec("revsearch")   # locates the package without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        installed = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
        if _is_repo(installed) and os.path.isdir(os.path.join(installed, "tune_configs")):
            yield installed                            # an editable install (not site-packages)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _is_repo(here):                                 # experiments/run_sweep.py inside a checkout
        yield here
    yield os.path.expanduser(os.path.join("~", "revsearch"))


def resolve_sweep_path(path: str, cwd: Optional[str] = None) -> str:
    """The absolute path of the sweep file: ``path`` as given (relative to ``cwd``, default the working
    directory), else relative to the first repository candidate that has it. Raises FileNotFoundError
    naming every place tried."""
    expanded = os.path.expanduser(path)
    tried = [os.path.abspath(os.path.join(cwd or os.getcwd(), expanded))]
    if os.path.isfile(tried[0]):
        return tried[0]
    if not os.path.isabs(expanded):
        for repo in repo_candidates():
            candidate = os.path.abspath(os.path.join(repo, expanded))
            if candidate in tried:
                continue
            if os.path.isfile(candidate):
                return candidate
            tried.append(candidate)
    raise FileNotFoundError(f"sweep file {path!r} not found (tried {', '.join(tried)})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="sweep YAML, e.g. tune_configs/wmt14_en_de.yaml")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "auto",
                        help="Ray cluster to join (default: $RAY_ADDRESS, else auto: the cluster this "
                             "node belongs to)")
    parser.add_argument("--command", choices=["run", "search"], default="run",
                        help="run: the whole job; search: stage 1 only")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the revsearch command line and exit")
    return parser


def revsearch_argv(argv: Optional[List[str]] = None, cwd: Optional[str] = None) -> Tuple[List[str], bool]:
    """(the arguments for ``revsearch.cli.main``, dry run?); exits with status 2 and one line on a bad
    argument."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        path = resolve_sweep_path(args.config, cwd)
    except FileNotFoundError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return [args.command, path, "--address", args.address, *rest], args.dry_run


def main(argv: Optional[List[str]] = None) -> int:
    command, dry_run = revsearch_argv(argv)
    if dry_run:
        print("revsearch " + " ".join(command))
        return 0
    import revsearch
    from revsearch.cli import main as revsearch_main
    # which copy of the code runs matters on a cluster: ray up's install, or a job's uploaded working dir
    print(f"{PROG}: revsearch from {os.path.dirname(os.path.abspath(revsearch.__file__))}; "
          f"revsearch {' '.join(command)}", flush=True)
    return revsearch_main(command)


if __name__ == "__main__":
    sys.exit(main())
