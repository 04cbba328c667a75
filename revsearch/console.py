"""Terminal output for people: a block of status lines redrawn in place on a terminal, or printed as
plain lines now and then when the output goes to a file, a pipe or CI (no ANSI codes there, ever).

Used by the live view of ``revsearch run`` (orchestration/live_view.py) and by the training progress
bars of ``revsearch retrain`` / ``train-baseline`` (commands/progress.py). Standard library only.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from typing import Callable, List, Optional, Sequence, TextIO

#: seconds between two plain (non-terminal) progress prints; 0 prints on every update
PLAIN_INTERVAL_ENV = "REVSEARCH_PROGRESS_INTERVAL"
DEFAULT_PLAIN_INTERVAL_S = 30.0
TTY_INTERVAL_S = 1.0   # a terminal redraw at most once a second (the view counts whole seconds)


def format_duration(seconds: Optional[float]) -> str:
    """``45s``, ``3m05s``, ``2h07m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def remaining_seconds(step: Optional[int], total_steps: Optional[int], steps_per_s: Optional[float],
                      budget_s: Optional[float] = None, trained_s: Optional[float] = None) -> Optional[float]:
    """Time left of a training run: the steps left at the current rate, or what is left of a time budget,
    whichever ends first; None when neither is known."""
    candidates = []
    if step is not None and total_steps and steps_per_s and steps_per_s > 0:
        candidates.append(max(0, total_steps - step) / steps_per_s)
    if budget_s and trained_s is not None:
        candidates.append(max(0.0, budget_s - trained_s))
    return min(candidates) if candidates else None


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # a closed or foreign stream
        return False


def plain_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PLAIN_INTERVAL_ENV, DEFAULT_PLAIN_INTERVAL_S)))
    except ValueError:
        return DEFAULT_PLAIN_INTERVAL_S


class StatusBlock:
    """A few status lines kept at the bottom of the output.

    On a terminal the block is erased and redrawn in place (at most every ``TTY_INTERVAL_S``) and each
    line is cut to the terminal width, so a redraw never leaves wrapped fragments behind. Elsewhere the
    block is printed as plain lines every ``interval_s`` seconds, or at once when ``quoted_value(force=True)``.
    ``line()`` prints a permanent line above the block in both cases."""

    def __init__(self, stream: Optional[TextIO] = None, live: Optional[bool] = None,
                 interval_s: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.live = is_terminal(self.stream) if live is None else live
        self.interval_s = plain_interval() if interval_s is None else interval_s
        self.clock = clock
        self._drawn = 0            # lines of the block now on the terminal
        self._last_show: Optional[float] = None
        self._last_lines: List[str] = []
        self._drawn_lines: List[str] = []   # what the terminal shows now

    def _erase(self) -> None:
        if self._drawn:
            # cursor to the start of the block's first line, then clear to the end of the screen
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn, self._drawn_lines = 0, []

    def _fit(self, text: str) -> str:
        width = shutil.get_terminal_size((120, 24)).columns
        return text if len(text) < width else text[: max(1, width - 2)] + "…"

    def quoted_value(self, lines: Sequence[str], force: bool = False) -> None:
        now = self.clock()
        interval = TTY_INTERVAL_S if self.live else self.interval_s
        if not force and self._last_show is not None and now - self._last_show < interval:
            self._last_lines = list(lines)
            return
        self._last_show = now
        self._last_lines = list(lines)
        if self.live:
            if list(lines) == self._drawn_lines and self._drawn:
                return   # nothing changed: no redraw, no flicker
            self._erase()
            for text in lines:
                self.stream.write(self._fit(text) + "\n")
            self._drawn, self._drawn_lines = len(lines), list(lines)
        else:
            self.stream.write("".join(text + "\n" for text in lines))
        self.stream.flush()

    def line(self, text: str) -> None:
        """A permanent line (an event, a log message), above the block on a terminal."""
        if self.live:
            self._erase()
            self.stream.write(text + "\n")
            for drawn in self._last_lines:
                self.stream.write(self._fit(drawn) + "\n")
            self._drawn, self._drawn_lines = len(self._last_lines), list(self._last_lines)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Take the block off the terminal (a closing summary is the caller's ``line()``)."""
        if self.live:
            self._erase()
            self.stream.flush()
        self._last_lines = []
