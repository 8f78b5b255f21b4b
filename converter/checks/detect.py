"""Detect unknown semantics: which reading of a file reproduces the output its owner recorded.

For a file whose kernels could be convolution or correlation kernels (a Keras 1 file records no
backend; a pickle records nothing), each hypothesis is read into the canonical model, run as a real
PyTorch module on the recorded input, and compared with the recorded output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


from weightport.core.text import printable
from weightport.core.errors import UsageError, WeightportError
from weightport.core.layout import CONVOLUTION, CORRELATION
from weightport.core.model import Model
from weightport.checks.report import compare, load_array

BACKEND_OF = {CONVOLUTION: "theano", CORRELATION: "tensorflow"}


@dataclass
class Hypothesis:
    source_semantics: str
    passed: bool
    max_abs_error: float | None = None
    detail: str = ""


@dataclass
class Detection:
    source: str
    hypotheses: list[Hypothesis] = field(default_factory=list)

    @property
    def matches(self) -> list[Hypothesis]:
        return [h for h in self.hypotheses if h.passed]

    @property
    def source_semantics(self) -> str | None:
        return self.matches[0].source_semantics if len(self.matches) == 1 else None

    def to_json(self) -> str:
        data = asdict(self)
        data["source_semantics"] = self.source_semantics
        data["assume_backend"] = BACKEND_OF.get(self.source_semantics or "")
        return json.dumps(data, indent=2)

    def summary(self) -> str:
        lines = [f"detect {self.source}"]
        for h in self.hypotheses:
            error = "" if h.max_abs_error is None else f" max abs error {h.max_abs_error:.3e}"
            lines.append(f"  {'MATCH' if h.passed else 'no   '} {h.source_semantics}{error}"
                         f"{(' - ' + h.detail) if h.detail else ''}")
        if self.source_semantics:
            lines.append(f"result: {self.source_semantics} kernels (convert with --source-semantics "
                         f"{self.source_semantics})")
        elif len(self.matches) > 1:
            lines.append("result: ambiguous - both readings reproduce the output (symmetric kernels?)")
        else:
            lines.append("result: no hypothesis reproduces the recorded output")
        return "\n".join(printable(line) for line in lines)  # one line each, whatever a name holds


def detect(path: str, read: Callable[[str], Model], input_path: str, expected_path: str, atol: float = 1e-4,
           rtol: float = 1e-4) -> Detection:
    """Try both kernel semantics for ``path`` against a recorded input/output pair.

    ``read(semantics)`` reads ``path`` with its kernels taken as ``semantics`` (the API's ``load``).
    """
    import torch
    from weightport.formats.torch.module import CanonicalModule, canonical_state_dict, from_canonical_output, to_canonical_input
    x = load_array(input_path, "input")
    expected = load_array(expected_path, "expected output")
    detection = Detection(path)
    for semantics in (CONVOLUTION, CORRELATION):
        try:
            model = read(semantics)
            if not model.has_architecture:
                raise UsageError("the file carries no architecture to run", path=path,
                                 fix="Give a model file with its config, or a spec file")
            module = CanonicalModule(model).eval()
            module.load_state_dict(canonical_state_dict(model), strict=True)
            with torch.no_grad():
                got = module(torch.from_numpy(to_canonical_input(x, model))).numpy()
            check = compare(semantics, from_canonical_output(got, model), expected, atol, rtol)
            detection.hypotheses.append(Hypothesis(semantics, check.passed, check.max_abs_error, check.reason))
        except WeightportError as error:
            detection.hypotheses.append(Hypothesis(semantics, False, None, error.problem))
    return detection
