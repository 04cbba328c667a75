"""The ``revsearch`` command. Each subcommand lives in ``revsearch/commands/<name>.py`` and provides
``register(subparsers)``; add new ones to ``COMMANDS``. Errors a user can fix are reported as one line
on stderr with exit status 2; nothing prints a traceback unless ``REVSEARCH_DEBUG=1``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from .errors import RevsearchError

COMMANDS = ["run", "retrain", "report", "data", "train", "translate", "evaluate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revsearch",
        description="Memory-efficient differentiable architecture search for Transformers: a reversible "
                    "multi-split DARTS supernet searched as Ray Tune experiments, tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"revsearch.commands.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RevsearchError as err:
        print(f"revsearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("revsearch: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("REVSEARCH_DEBUG"):
            raise
        print(f"revsearch: internal error: {type(err).__name__}: {err} "
              f"(set REVSEARCH_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
