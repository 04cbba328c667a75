"""The ``revsearch`` command. Each subcommand lives in ``revsearch/commands/<name>.py`` and provides
``register(subparsers)``; add new ones to ``COMMANDS``. Errors a user can fix are reported as one line
on stderr with exit status 2; nothing prints a traceback unless ``REVSEARCH_DEBUG=1``."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import List, Optional

from .errors import RevsearchError

# Idle OpenMP threads that spin make torch several times slower on a shared or oversubscribed machine
# (two Tune trials on two cores); sleeping threads cost nothing measurable. Must precede torch's import;
# Ray workers started from here inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMANDS = ["run", "retrain", "report", "data", "train", "translate", "evaluate"]


def one_line(text: object, limit: int = 2000) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one stderr line (``<prog>: error: <what> (see <prog> --help)``)
    instead of the usage block plus the error. Subparsers inherit the class."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="revsearch",
        description="Memory-efficient differentiable architecture search for Transformers: a reversible "
                    "multi-split DARTS supernet searched as Ray Tune experiments, tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"revsearch.commands.{name}").register(sub)
    return parser


def _deepest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ``args`` selected, e.g. ``revsearch data check``."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _deepest(action.choices[name], args)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand whose options were mistyped, not the top-level program
        _deepest(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    from . import interrupts
    previous = interrupts.install()   # Ctrl-C and SIGTERM unwind through the code that ends MLflow runs
    try:
        return int(args.handler(args) or 0)
    except RevsearchError as err:
        print(f"revsearch: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Interrupted, or a plain one from code that replaced our handler
        signum = getattr(err, "signum", signal.SIGINT)
        detail = one_line(err)
        # only as the process's own command (argv None), never when a test calls main() in-process
        ray_started = argv is None and interrupts.shut_down_ray()
        print(f"revsearch: interrupted by {signal.Signals(signum).name}{'; ' + detail if detail else ''}",
              file=sys.stderr, flush=True)
        if ray_started:
            interrupts.exit_now(128 + int(signum))
        return 128 + int(signum)
    except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("REVSEARCH_DEBUG"):
            raise
        print(f"revsearch: internal error: {type(err).__name__}: {one_line(err, 500)} "
              f"(set REVSEARCH_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    finally:
        interrupts.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
