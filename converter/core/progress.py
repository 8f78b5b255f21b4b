"""A progress line on stderr for conversions that take more than a moment.

Shown only when stderr is a terminal, ``--quiet`` was not given and the
write has run for over half a second; one line, rewritten in place, per
tensor with bytes done of the total.  Pipelines (stderr not a terminal) see
nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DELAY_SECONDS = 0.5  # WEIGHTPORT_PROGRESS_DELAY overrides (seconds)


def delay_seconds() -> float:
    try:
        return float(os.environ.get("WEIGHTPORT_PROGRESS_DELAY", DELAY_SECONDS))
    except ValueError:
        return DELAY_SECONDS


def human_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class Progress:
    """Counts bytes written for ``label``; draws on ``stream`` when enabled and slow enough."""

    def __init__(self, label: str, total_bytes: int, quiet: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and is_terminal(self.stream)
        self.label = label
        self.total = max(total_bytes, 1)
        self.done = 0
        self.started = time.monotonic()
        self.drawn = False
        self.delay = delay_seconds()

    def advance(self, name: str, nbytes: int) -> None:
        """``name``'s ``nbytes`` are written."""
        self.done += nbytes
        if self.enabled and time.monotonic() - self.started >= self.delay:
            percent = 100 * self.done / self.total
            line = f"\r{self.label}: {percent:5.1f}% {human_bytes(self.done)} / {human_bytes(self.total)}  {name[:40]}"
            self.stream.write(line.ljust(100))
            self.stream.flush()
            self.drawn = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
