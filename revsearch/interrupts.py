"""Ctrl-C and SIGTERM: every command stops cleanly, ends the MLflow runs it opened as KILLED, and says
how to continue (``revsearch run ... --resume``), instead of a traceback, a run left RUNNING forever or
a crash at exit.

:func:`install` makes both signals raise :class:`~revsearch.errors.Interrupted` in the main thread, so
the ``finally`` blocks that end MLflow runs run (Python's default SIGTERM ends the process without
them). Ray Tune's ``Tuner.fit()`` installs its own SIGINT handler for its duration: the first Ctrl-C
stops the trials, saves the experiment state and makes ``fit()`` *return* (with unfinished trials, which
must not be mistaken for failed ones), and Tune puts the previous handler back. :func:`fit_interruptibly`
tells such a return apart from a finished one, and a SIGTERM during ``fit()`` is handed to Tune's handler
so it stops just as gracefully. Standard library only: imported by the CLI before anything heavy.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, List, Tuple

from .errors import Interrupted

#: signals received since :func:`install` (names), newest last
received: List[str] = []
_installed = False   # install() ran (the CLI): reclaim() may put the handlers back


def _on_signal(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    received.append(name)
    current = signal.getsignal(signal.SIGINT)
    if (signum == signal.SIGTERM and callable(current)
            and current not in (_on_signal, signal.default_int_handler)):
        current(signal.SIGINT, frame)   # inside Tuner.fit(): Tune's graceful stop (saves the experiment)
        return
    raise Interrupted("", signum)


def install() -> dict:
    """SIGINT and SIGTERM raise ``Interrupted`` (main thread only; elsewhere a no-op). Returns the
    handlers it replaced, for :func:`restore`."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return {}
    _installed = True
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def restore(previous: dict) -> None:
    global _installed
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _installed = False


def reclaim() -> None:
    """Put our handlers back after ``ray.init()``, which installs its own SIGTERM handler (a bare
    ``sys.exit``: exit status 1, no line, every MLflow run torn down as FAILED). No-op unless
    :func:`install` ran."""
    if _installed and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _on_signal)


class Deferred:
    """Signals held back by :func:`shielded`."""

    def __init__(self):
        self.signums: List[int] = []

    def deliver(self) -> None:
        """Raise ``Interrupted`` for the first held-back signal, if any."""
        if self.signums:
            received.append(signal.Signals(self.signums[0]).name)
            raise Interrupted("", self.signums[0])


@contextlib.contextmanager
def shielded(deliver: bool = True) -> Iterator[Deferred]:
    """SIGINT/SIGTERM arriving inside the block are held back, so a second Ctrl-C cannot cut the few
    writes that open or close MLflow runs in half, and raised when it ends (``deliver=False``: when the
    caller calls ``deliver()`` on the object the block yields, e.g. inside its ``try``)."""
    deferred = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return
    old = {s: signal.signal(s, lambda signum, frame: deferred.signums.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield deferred
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    if deliver:
        deferred.deliver()


def _tune_catches_sigint() -> bool:
    """Tune installs its SIGINT handler from the main thread unless told not to (ray/tune/tune.py)."""
    return (threading.current_thread() is threading.main_thread()
            and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0))


class _DropTuneResumeHint(logging.Filter):
    """After an interrupt, Tune's own advice (``Tuner.restore(...)``) and its "Trials did not complete"
    are wrong for revsearch, which resumes with ``--resume``; the CLI says that instead. Without an
    interrupt nothing is dropped."""

    def __init__(self, ours, count: int):
        super().__init__()
        self.ours, self.count = ours, count

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith("Experiment has been interrupted"):
            return False
        stopped = len(received) > self.count or (_tune_catches_sigint()
                                                 and signal.getsignal(signal.SIGINT) is self.ours)
        return not (stopped and text.startswith("Trials did not complete"))


def fit_interruptibly(fit: Callable[[], Any]) -> Tuple[Any, int]:
    """``fit()`` (a ``Tuner.fit``), and the signal that stopped it (0: none). Tune's handler puts back the
    handler it found only when it fires, so after ``fit()`` ours is installed again only if it did; a
    handler Tune leaves behind after a normal end is replaced by ours."""
    ours = signal.getsignal(signal.SIGINT)
    count = len(received)
    tune_logger = logging.getLogger("ray.tune.tune")
    hint_filter = _DropTuneResumeHint(ours, count)
    tune_logger.addFilter(hint_filter)
    try:
        result = fit()
    finally:
        tune_logger.removeFilter(hint_filter)
    if len(received) > count:   # a SIGTERM handed to Tune's handler
        stopped_by = int(signal.Signals[received[-1]])
    elif _tune_catches_sigint() and signal.getsignal(signal.SIGINT) is ours:
        stopped_by = int(signal.SIGINT)
    else:
        stopped_by = 0
    if threading.current_thread() is threading.main_thread() and ours is not None:
        signal.signal(signal.SIGINT, ours)
    return result, stopped_by


def shut_down_ray() -> bool:
    """Stop this process's Ray (its local cluster, if it started one) after an interrupt, while the
    interpreter is still whole. Returns whether Ray had been started: then the caller must leave with
    :func:`exit_now`, because after a Ctrl-C during or just after ``ray.init()`` the interpreter's own
    exit crashed with SIGSEGV after the last line was printed (4 of 4 tries; ``ray.shutdown()`` alone did
    not prevent it)."""
    ray = sys.modules.get("ray")
    worker = sys.modules.get("ray._private.worker")
    # a Ctrl-C inside ray.init() leaves Ray half started: its node exists, is_initialized() is still False
    started = ray is not None and (ray.is_initialized() or getattr(worker, "_global_node", None) is not None)
    if not started:
        return False
    with shielded(deliver=False):
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the process is about to exit anyway
            pass
    return True


def exit_now(code: int) -> None:
    """Flush and end the process without the interpreter's teardown (see :func:`shut_down_ray`)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    logging.shutdown()
    os._exit(code)
