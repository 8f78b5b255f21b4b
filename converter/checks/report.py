"""What a validation found: one :class:`Check` per comparison and the :class:`Report` that gathers them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from weightport.core.text import printable
from weightport.core.errors import UsageError


@dataclass
class Check:
    """One comparison: what was compared, its errors and whether it passed."""

    name: str
    passed: bool
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    detail: str = ""


@dataclass
class Report:
    """The outcome of a validation; ``passed`` is False when any check failed."""

    source: str
    converted: str
    atol: float
    rtol: float
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> str:
        data = asdict(self)
        data["passed"] = self.passed
        return json.dumps(data, indent=2)

    def summary(self) -> str:
        lines = [f"validate {self.source} -> {self.converted} (atol {self.atol:g}, rtol {self.rtol:g})"]
        for check in self.checks:
            status = ("SKIP" if check.detail.startswith("skipped") else "PASS") if check.passed else "FAIL"
            errors = "" if check.max_abs_error is None else (
                f" max abs error {check.max_abs_error:.3e}, max rel error {check.max_rel_error:.3e}")
            lines.append(f"  {status} {check.name}{errors}{(' - ' + check.detail) if check.detail else ''}")
        for skipped in self.skipped:
            lines.append(f"  SKIP {skipped}")
        lines.append("result: " + ("PASS" if self.passed else "FAIL"))
        return "\n".join(printable(line) for line in lines)  # one line each, whatever a name holds


def compare(name: str, got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> Check:
    """Elementwise |got - expected| <= atol + rtol * |expected|, with the largest errors."""
    if got.shape != expected.shape:
        return Check(name, False, detail=f"output shape {got.shape} differs from expected {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    scale = np.abs(expected.astype(np.float64))
    rel = diff / np.maximum(scale, np.finfo(np.float64).tiny)
    passed = bool(np.all(diff <= atol + rtol * scale))
    return Check(name, passed, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)))


def load_array(path: str, role: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the {role} array ({error})", path=path,
                         fix="Give a .npy file written by numpy.save") from None
