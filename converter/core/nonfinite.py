"""NaN, Inf and denormal values: counted per tensor, never changed.

weightport's transforms only move values, so NaN payloads, infinities and
denormals reach the output bit for bit; ``inspect`` reports them and
``convert --fail-on-nonfinite`` refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightport.core.errors import BadInputError
from weightport.core.model import Model


@dataclass(frozen=True)
class Special:
    """Counts of special values in one tensor."""

    key: str
    nan: int
    inf: int
    denormal: int

    def describe(self) -> str:
        parts = [f"{n} {label}" for n, label in ((self.nan, "NaN"), (self.inf, "Inf"), (self.denormal, "denormal"))
                 if n]
        return f"tensor {self.key} holds {', '.join(parts)} value(s) (kept bit-exactly)"


def count_special(key: str, array: np.ndarray) -> Special | None:
    """Special values of a floating-point array, or None when it has none (or is not floating point)."""
    if array.dtype.kind != "f":
        return None
    nan = int(np.isnan(array).sum())
    inf = int(np.isinf(array).sum())
    tiny = np.finfo(array.dtype).smallest_normal
    magnitude = np.abs(array)
    denormal = int(((magnitude < tiny) & (magnitude > 0)).sum())
    return Special(key, nan, inf, denormal) if nan or inf or denormal else None


def scan(model: Model) -> list[Special]:
    """Every tensor's special values, reading one tensor at a time."""
    found = []
    for key, _, tensor in model.state_keys():
        special = count_special(key, tensor.read())
        if special is not None:
            found.append(special)
    return found


def refuse_nonfinite(model: Model) -> None:
    """Raise :class:`BadInputError` when any tensor holds NaN or Inf."""
    bad = [s for s in scan(model) if s.nan or s.inf]
    if bad:
        names = ", ".join(s.key for s in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise BadInputError(f"{len(bad)} tensor(s) hold NaN or Inf values ({names})", path=model.source.path,
                            fix="Fix the model, or convert without {opt:fail_on_nonfinite=True} to keep them as they are")
