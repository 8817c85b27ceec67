"""A small progress bar on stderr for long work a user waits on (conversion, warm-up, bench).

On a terminal it redraws one line; elsewhere (logs, CI) it stays quiet until the end and then
prints one summary line, so captured output is not flooded.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``bar = ProgressBar(30, "converting"); bar(1, 30) ... bar.close()``; callable as a
    ``progress(done, total)`` callback."""

    def __init__(
        self, total: int, label: str, unit: str = "", stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done = done
        now = time.monotonic()
        if self._tty and (now - self._last_draw > 0.05 or done >= self.total):
            self._last_draw = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def _line(self) -> str:
        total = self.total or 1
        filled = int(self.width * min(self.done, total) / total)
        bar = "#" * filled + "." * (self.width - filled)
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label} [{bar}] {self.done}/{self.total}{unit}"

    def close(self) -> None:
        elapsed = time.monotonic() - self._started
        line = f"{self._line()} in {elapsed:.1f}s"
        self.stream.write(("\r" if self._tty else "") + line + "\n")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
