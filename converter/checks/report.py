"""What a validation found: one :class:`Check` per comparison and the :class:`Report` that gathers them.

Three outcomes, never blurred.  A check is ``pass``, ``fail`` or ``skip`` (with its reason).  The
report is

* ``pass`` (exit 0) when nothing failed and every weighted layer of the source is covered by a check
  that ran (its own layer check, or a whole-model check);
* ``fail`` (exit 1) when any check failed;
* ``incomplete`` (exit 3, or 0 with ``allow_incomplete``) when nothing failed but a weighted layer
  went unchecked; :attr:`Report.unchecked` lists each one and why.

Errors are measured against the scale of the reference (``max |reference|``), so near-zero outputs
give meaningful numbers: a check passes when ``max |got - reference| <= atol + rtol * scale``, or,
where the source framework could be run in float64 as well, when the error is within
:data:`NOISE_FACTOR` times the framework's own float32 noise (shown beside it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from weightport.core.errors import UsageError
from weightport.core.text import printable
from weightport.core.tolerances import DEFAULT_ATOL, DEFAULT_RTOL  # re-exported: the defaults of every check

PASS, FAIL, SKIP = "pass", "fail", "skip"
INCOMPLETE = "incomplete"
EXIT_CODES = {PASS: 0, FAIL: 1, INCOMPLETE: 3}
NAMES, LAYER, WHOLE_MODEL = "names", "layer", "whole-model"
NOISE_FACTOR = 4.0
# A layer check whose source also ran in float64 (so its float32 noise is known, and NOISE_FACTOR times it
# still passes a layer whose float32 error grows with its size) gets a tenth of the tolerance: there a
# correct float32 port is a few ulps from the source (measured on every fixture: at most 3e-7 of the
# scale), while an attribute-sized mistake (a batch-norm epsilon of 1e-5 for Lasagne's 1e-4 moves the
# layer's output by 5e-5 of its scale) is not, even where it hides under the whole model's tolerance
# (docs/validation.md).  A layer check without a noise figure (an oracle that runs float32 only) keeps
# the whole tolerance.
LAYER_SHARE = 0.1


@dataclass
class Check:
    """One comparison: what was compared (``check``: names, layer or whole-model), its status and errors.

    ``max_rel_error`` is ``max_abs_error / scale`` with ``scale = max |reference|``; ``rel_rmse`` is the
    RMS of the error over the RMS of the reference; ``noise`` is the source framework's own float32
    error (float32 against float64) where it could be measured.
    """

    name: str
    status: str
    check: str = LAYER
    layer: str | None = None
    kind: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    rel_rmse: float | None = None
    cosine: float | None = None
    scale: float | None = None
    noise: float | None = None
    reason: str = ""
    likely_cause: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def ran(self) -> bool:
        return self.status in (PASS, FAIL)


@dataclass
class Report:
    """The outcome of a validation (see the module docstring for pass, fail and incomplete)."""

    source: str
    converted: str
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    checks: list[Check] = field(default_factory=list)
    weighted_layers: list[tuple[str, str]] = field(default_factory=list)  # (name, kind) the checks must cover
    notes: list[str] = field(default_factory=list)  # why a whole-model check did not run, and similar
    allow_incomplete: bool = False
    target: str = ""
    reference: Any = None  # weightport.checks.source_reference.Reference: what the whole model was run against

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def skip(self, name: str, reason: str, check: str = WHOLE_MODEL, layer: str | None = None,
             kind: str | None = None) -> Check:
        return self.add(Check(name, SKIP, check, layer, kind, reason=reason))

    @property
    def unchecked(self) -> list[dict[str, str]]:
        """Weighted layers no check that ran covers, each with the reason its checks gave."""
        if any(c.check == WHOLE_MODEL and c.ran for c in self.checks):
            return []
        covered = {c.layer for c in self.checks if c.check == LAYER and c.ran}
        gaps = []
        for name, kind in self.weighted_layers:
            if name in covered:
                continue
            reasons = [c.reason for c in self.checks if c.layer == name and c.status == SKIP]
            reasons += [f"whole model: {c.reason}" for c in self.checks if c.check == WHOLE_MODEL and c.status == SKIP]
            gaps.append({"layer": name, "kind": kind, "reason": "; ".join(reasons) or "no check ran for it"})
        return gaps

    @property
    def status(self) -> str:
        if any(c.status == FAIL for c in self.checks):
            return FAIL
        if self.unchecked or not any(c.ran for c in self.checks):
            return INCOMPLETE
        return PASS

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def exit_code(self) -> int:
        if self.status == INCOMPLETE and self.allow_incomplete:
            return 0
        return EXIT_CODES[self.status]

    @property
    def accepted(self) -> bool:
        """True when a conversion validated by this report may be written (pass, or allowed incomplete)."""
        return self.exit_code == 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("weighted_layers")
        data["reference"] = self.reference.to_dict() if self.reference is not None else None
        data.update(status=self.status, exit_code=self.exit_code, unchecked_layers=self.unchecked,
                    passed=self.passed)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        lines = [f"validate {self.source} -> {self.converted} (atol {self.atol:g}, rtol {self.rtol:g} of the "
                 f"reference's scale; layer checks with a noise figure {LAYER_SHARE:g} of that)"]
        for check in self.checks:
            lines.append(f"  {check.status.upper():4} {check.name}{metrics(check)}"
                         f"{(' - ' + check.reason) if check.reason else ''}"
                         f"{(' - likely cause: ' + check.likely_cause) if check.likely_cause else ''}")
        if self.reference is not None and self.reference.runner:
            lines.append(f"  note: reference: {self.reference.runner} ran the source on seeded random input (seed "
                         f"{self.reference.seed}, {self.reference.samples} samples, shape "
                         f"{tuple(self.reference.input_shape)})")
        for note in self.notes:
            lines.append(f"  note: {note}")
        for gap in self.unchecked:
            lines.append(f"  UNCHECKED layer {gap['layer']} ({gap['kind']}): {gap['reason']}")
        result = self.status.upper()
        if self.status == INCOMPLETE:
            result += " (allowed by --allow-incomplete)" if self.allow_incomplete else \
                " (nothing failed, but not everything was checked: exit 3; --allow-incomplete accepts it)"
        lines.append(f"result: {result}")
        return "\n".join(printable(line) for line in lines)  # one line each, whatever a name holds


def metrics(check: Check) -> str:
    if check.max_abs_error is None:
        return ""
    text = f" max abs error {check.max_abs_error:.3e} ({check.max_rel_error:.2e} of scale {check.scale:.3g})"
    if check.cosine is not None:
        text += f", rel RMSE {check.rel_rmse:.2e}, cosine {check.cosine:.7f}"
    if check.noise is not None:
        text += f", source float32 noise {check.noise:.3e}"
    return text


def compare(name: str, got: np.ndarray, expected: np.ndarray, atol: float, rtol: float, *,
            check: str = LAYER, layer: str | None = None, kind: str | None = None,
            noise: float | None = None) -> Check:
    """Compare ``got`` with the reference ``expected`` (see the module docstring for the criterion)."""
    if got.shape != expected.shape:
        return Check(name, FAIL, check, layer, kind,
                     reason=f"output shape {tuple(got.shape)} differs from the reference's {tuple(expected.shape)}")
    got64, ref64 = got.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(got64) & np.isnan(ref64)  # a NaN the reference has too is no error; any other is
    diff = np.nan_to_num(np.where(both_nan, 0.0, np.abs(got64 - ref64)), nan=np.inf)
    ref64 = np.where(both_nan, 0.0, ref64)
    scale = float(np.abs(ref64).max(initial=0.0))
    max_abs = float(diff.max(initial=0.0))
    tiny = np.finfo(np.float64).tiny
    ref_rms = float(np.sqrt(np.mean(ref64 ** 2))) if ref64.size else 0.0
    rel_rmse = float(np.sqrt(np.mean(diff ** 2)) / max(ref_rms, tiny)) if diff.size else 0.0
    norms = float(np.linalg.norm(got64) * np.linalg.norm(ref64))
    cosine = float(np.dot(got64.ravel(), ref64.ravel()) / norms) if norms > 0 else (1.0 if max_abs == 0 else 0.0)
    if check == WHOLE_MODEL and scale <= atol and max_abs <= atol:
        return Check(name, SKIP, check, layer, kind,
                     reason=f"the reference output is within the tolerance of zero everywhere (largest |value| "
                            f"{scale:.3g}, atol {atol:.3g}), so any port would match it; use an input that gives a "
                            "larger output")
    share = LAYER_SHARE if check == LAYER and noise is not None else 1.0
    passed = max_abs <= share * (atol + rtol * scale) or (noise is not None and max_abs <= NOISE_FACTOR * noise)
    return Check(name, PASS if passed else FAIL, check, layer, kind, max_abs, max_abs / max(scale, tiny), rel_rmse,
                 cosine, scale, noise)


def load_array(path: str, role: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the {role} array ({error})", path=path,
                         fix="Give a .npy file written by numpy.save") from None
