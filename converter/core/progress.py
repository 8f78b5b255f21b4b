"""A progress line on stderr for conversions that take more than a moment.

Shown only when stderr is a terminal, ``--quiet`` was not given and the
write has run for over half a second; one line, rewritten in place as blocks
are written (at most ten times a second), with bytes done of the total, the
rate and the time left.  Pipelines (stderr not a terminal) see nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DELAY_SECONDS = 0.5  # WEIGHTPORT_PROGRESS_DELAY overrides (seconds)


def env_seconds(name: str, default: float) -> float:
    """Seconds from the environment variable ``name`` (``default`` when unset or not a number)."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def delay_seconds() -> float:
    return env_seconds("WEIGHTPORT_PROGRESS_DELAY", DELAY_SECONDS)


def human_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


REDRAW_SECONDS = 0.1  # WEIGHTPORT_PROGRESS_INTERVAL overrides (seconds)


def redraw_seconds() -> float:
    return env_seconds("WEIGHTPORT_PROGRESS_INTERVAL", REDRAW_SECONDS)


def progress_line(label: str, name: str, done: int, total: int, elapsed: float) -> str:
    """``writing x: 42.0% 1.2 GiB / 2.9 GiB, 310.5 MiB/s, 6 s left  layer.weight``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f"{(total - done) / rate:.0f} s left" if rate > 0 else "? s left"
    return (f"{label}: {100 * done / total:5.1f}% {human_bytes(done)} / {human_bytes(total)}, "
            f"{human_bytes(rate)}/s, {left}  {name[:40]}")


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
        self.last_drawn = 0.0
        self.interval = redraw_seconds()

    def advance(self, name: str, nbytes: int) -> None:
        """``nbytes`` more of tensor ``name`` are written (call per block: a large tensor moves the line as it
        goes).  Redrawn at most every :func:`redraw_seconds`, with the rate so far and the time left."""
        self.done += nbytes
        now = time.monotonic()
        elapsed = now - self.started
        if not self.enabled or elapsed < self.delay or now - self.last_drawn < self.interval:
            return
        self.last_drawn = now
        self.stream.write(("\r" + progress_line(self.label, name, self.done, self.total, elapsed)).ljust(110))
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
