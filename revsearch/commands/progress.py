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
