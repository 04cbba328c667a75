"""Peak memory and time of the bounded bad-input cases (issue 12) through the real CLI.

Each case of ``tests/test_bad_inputs.py`` named below runs as ``python -m revsearch.cli ...`` under an
address-space cap (``RLIMIT_AS``, so a regression fails instead of endangering the machine) and a
timeout; the child's own peak RSS comes from ``os.wait4``. Prints a Markdown table and writes JSON::

    python experiments/bad_input_bounds.py [--out bad_input_bounds.json] [--cap-gib 4]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.test_bad_inputs import CASES, Files  # noqa: E402

BOUNDED = ["sweep-alias-bomb-seed", "sweep-alias-bomb-name", "sweep-alias-bomb-steps", "sweep-alias-bomb-values",
           "sweep-alias-bomb-op-set", "sweep-alias-recursive", "sweep-dev-zero", "sweep-dev-urandom", "sweep-fifo",
           "sweep-too-large", "space-choice-100k", "sweep-num-samples-huge", "sweep-hidden-huge",
           "sweep-hidden-space-huge", "sweep-synthetic-huge", "resources-cpu-too-many", "resources-gpu-too-many",
           "genotype-huge-splits", "genotype-many-layers", "genotype-million-layers", "checkpoint-spec-oversized",
           "tracking-sqlite-directory"]


def run(case, files: Files, cap: int, timeout: float):
    storage = files.storage(case.id)
    argv = case.argv(files, storage)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "REVSEARCH_DEBUG"))}
    env["RAY_ADDRESS"] = ""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "revsearch.cli", *argv], cwd=files.cases, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=limit)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    seconds = time.perf_counter() - start
    return proc.returncode, err.decode("utf-8", "replace"), seconds


def one(case_id: str, root: str, cap: int, timeout: float) -> dict:
    files = Files(root)
    case = next(c for c in CASES if c.id == case_id)
    code, err, seconds = run(case, files, cap, timeout)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    line = " / ".join(err.splitlines()).replace(root, "<tmp>")
    return {"case": case_id, "exit": code, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024, 1),
            "line": line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bad_input_bounds.json")
    parser.add_argument("--cap-gib", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cap = int(args.cap_gib * 2 ** 30)
    if args.one:   # a helper process: its RUSAGE_CHILDREN is exactly the one CLI run
        print(json.dumps(one(args.one, args.root, cap, args.timeout)))
        return
    root = tempfile.mkdtemp(prefix="revsearch-bounds-")
    rows = []
    try:
        for case_id in BOUNDED:
            out = subprocess.run([sys.executable, __file__, "--one", case_id, "--root", root,
                                  "--cap-gib", str(args.cap_gib), "--timeout", str(args.timeout)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{case_id}: exit {rows[-1]['exit']}, {rows[-1]['seconds']} s, {rows[-1]['peak_rss_mib']} MiB",
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"| case | exit | seconds | peak RSS (MiB) | the line (cap {args.cap_gib:g} GiB of address space) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['case']}` | {r['exit']} | {r['seconds']} | {r['peak_rss_mib']} | "
              f"`{r['line'].replace('|', chr(92) + '|')}` |")
    with open(args.out, "w") as f:
        json.dump({"cap_gib": args.cap_gib, "cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
