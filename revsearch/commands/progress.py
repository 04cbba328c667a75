"""A progress line for long decoding jobs on stderr: a bar redrawn in place when stderr is a terminal,
and one summary line (sentences, seconds, sentences/s) at the end either way. Plain text, no
dependency; stdout stays clean for the translations."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, total: int, label: str = "translated", stream: Optional[TextIO] = None,
                 width: int = 30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    def update(self, n: int) -> None:
        self.done += n
        if self.live and self.total:
            filled = int(self.width * self.done / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} sentences, {self.rate:.1f} sentences/s")
            self.stream.flush()

    def close(self) -> None:
        if self.live and self.total:
            self.stream.write("\n")
        self.stream.write(f"{self.label} {self.done} sentences in {self.seconds:.1f} s "
                          f"({self.rate:.1f} sentences/s)\n")
        self.stream.flush()


class TrainingProgress:
    """The progress of one training run for ``revsearch retrain`` and ``train-baseline``: a bar (steps,
    loss, steps/s, time left) redrawn in place on a terminal, a plain line every 30 s elsewhere
    (``REVSEARCH_PROGRESS_INTERVAL``). Feed it the Trainer's ``on_step``; print other lines through
    :meth:`log` so they land above the bar. ``total_steps`` and/or ``budget_s`` give the bar its end."""

    def __init__(self, label: str, total_steps: Optional[int] = None, budget_s: Optional[float] = None,
                 stream: Optional[TextIO] = None, block=None, clock=time.monotonic, width: int = 24):
        from ..console import StatusBlock
        self.label, self.total_steps, self.budget_s, self.width = label, total_steps, budget_s, width
        self.block = block if block is not None else StatusBlock(stream)
        self.clock = clock
        self.first: Optional[tuple] = None     # (time, step) of the first step seen: resumed runs start late
        self.step = 0

    def line(self, step: int, trained_s: float, loss: float, steps_per_s: Optional[float]) -> str:
        """The bar for these numbers (pure, for tests)."""
        from ..console import format_duration, remaining_seconds
        fraction = None
        if self.total_steps:
            fraction = step / self.total_steps
        if self.budget_s:
            fraction = max(fraction or 0.0, trained_s / self.budget_s)
        parts = [f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}", f"loss {loss:.3f}"]
        if steps_per_s:
            parts.append(f"{steps_per_s:.2f} steps/s" if steps_per_s < 10 else f"{steps_per_s:.0f} steps/s")
        remaining = remaining_seconds(step, self.total_steps, steps_per_s, self.budget_s, trained_s)
        if remaining is not None:
            parts.append(f"ETA {format_duration(remaining)}")
        bar = ""
        if fraction is not None:
            filled = int(self.width * min(1.0, fraction))
            bar = "[" + "#" * filled + "-" * (self.width - filled) + "] "
        return f"{self.label}: {bar}{' | '.join(parts)}"

    def __call__(self, step: int, trained_s: float, loss: float) -> None:
        """The Trainer's ``on_step`` hook."""
        now = self.clock()
        if self.first is None:   # the rate is measured from here: start-up and earlier sessions excluded
            self.first = (now, step)
        first_time, first_step = self.first
        rate = (step - first_step) / (now - first_time) if now > first_time and step > first_step else None
        self.step = step
        self.block.quoted_value([self.line(step, trained_s, loss, rate)])

    def log(self, message: str) -> None:
        self.block.line(message)

    def close(self) -> None:
        self.block.close()
