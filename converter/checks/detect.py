"""Detect unknown semantics: which reading of a file reproduces the output its owner recorded.

For a file whose kernels could be convolution or correlation kernels (a Keras 1 file records no
backend; a pickle records nothing), each hypothesis is read into the canonical model, run as a real
PyTorch module on the recorded input, and compared with the recorded output.  When neither reading
of the whole file matches, each kernel is tried both ways in turn (a model whose layers were saved
under different conventions gets a per-layer answer).  Kernels whose spatial size is 1 cannot tell.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

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
    per_layer: dict[str, str] = field(default_factory=dict)  # layer -> semantics, when layers differ
    undecidable: list[str] = field(default_factory=list)      # kernels a flip cannot change (1x1)

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
        if self.undecidable:
            lines.append(f"  note: kernels of {', '.join(self.undecidable)} have spatial size 1: a flip cannot "
                         "change them, so they do not tell the readings apart")
        if self.per_layer:
            for layer, semantics in self.per_layer.items():
                lines.append(f"  layer {layer}: {semantics}")
            lines.append("result: the layers were saved under different conventions (per layer above)")
        elif self.source_semantics:
            lines.append(f"result: {self.source_semantics} kernels (convert with --source-semantics "
                         f"{self.source_semantics})")
        elif len(self.matches) > 1:
            lines.append("result: ambiguous - both readings reproduce the output (kernels symmetric under a "
                         "180-degree rotation, or of spatial size 1)")
        else:
            lines.append("result: no hypothesis reproduces the recorded output")
        return "\n".join(printable(line) for line in lines)  # one line each, whatever a name holds


def detect(path: str, read: Callable[[str], Model], input_path: str, expected_path: str, atol: float = 1e-4,
           rtol: float = 1e-4) -> Detection:
    """Try both kernel semantics for ``path`` against a recorded input/output pair, then per layer.

    ``read(semantics)`` reads ``path`` with its kernels taken as ``semantics`` (the API's ``load``).
    """
    import torch

    from weightport.formats.torch.module import (CanonicalModule, canonical_state_dict, from_canonical_output,
                                                 to_canonical_input)
    x = load_array(input_path, "input")
    expected = load_array(expected_path, "expected output")
    detection = Detection(path)
    runs: dict[str, tuple[Model, dict]] = {}
    for semantics in (CONVOLUTION, CORRELATION):
        try:
            model = read(semantics)
            if not model.has_architecture:
                raise UsageError("the file carries no architecture, so it cannot be run on the recorded input",
                                 path=path, fix="Give {opt:spec=FILE} naming its layers (see docs/formats/theano.md), "
                                                "or the model file with its config")
            state = canonical_state_dict(model)
            module = CanonicalModule(model).eval()
            module.load_state_dict(state, strict=True)
            with torch.no_grad():
                got = module(torch.from_numpy(to_canonical_input(x, model))).numpy()
            check = compare(semantics, from_canonical_output(got, model), expected, atol, rtol)
            detection.hypotheses.append(Hypothesis(semantics, check.passed, check.max_abs_error, check.reason))
            runs[semantics] = (model, state)
        except UsageError:
            raise
        except WeightportError as error:
            detection.hypotheses.append(Hypothesis(semantics, False, None, error.problem))
    if CORRELATION in runs:
        model, state = runs[CORRELATION]
        detection.undecidable = [layer.name for layer in model.layers if kernel_key(layer) and
                                 all(n == 1 for n in state[kernel_key(layer)].shape[2:])]
        if not detection.matches:
            detection.per_layer = per_layer_search(model, state, x, expected, atol, rtol, detection.undecidable)
    return detection


def kernel_key(layer) -> str | None:
    """The state_dict key of a layer's convolution kernel (one with spatial axes and semantics)."""
    tensor = layer.tensors.get("weight")
    if tensor is None or tensor.layout.semantics not in (CONVOLUTION, CORRELATION):
        return None
    return f"{layer.name}.weight"


def per_layer_search(model: Model, state: dict, x, expected, atol: float, rtol: float,
                     undecidable: list[str]) -> dict[str, str]:
    """Each kernel read both ways in turn (coordinate descent on the output error, at most three passes);
    the per-layer semantics when that reproduces the recorded output, else nothing."""
    import torch

    from weightport.core.layout import flip_axes
    from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
    module = CanonicalModule(model).eval()
    canonical_x = torch.from_numpy(to_canonical_input(x, model))
    kernels = [layer for layer in model.layers if kernel_key(layer) and layer.name not in undecidable]
    flipped = {layer.name: False for layer in kernels}

    def error() -> float:
        trial = dict(state)
        for layer in kernels:
            if flipped[layer.name]:
                weight = state[kernel_key(layer)].numpy()
                trial[kernel_key(layer)] = torch.from_numpy(
                    np.ascontiguousarray(flip_axes(weight, tuple(range(2, weight.ndim)))))
        module.load_state_dict(trial, strict=True)
        with torch.no_grad():
            got = from_canonical_output(module(canonical_x).numpy(), model)
        return compare("", got, expected, atol, rtol).max_abs_error or 0.0

    best = error()
    for _ in range(3):
        improved = False
        for layer in kernels:
            flipped[layer.name] = not flipped[layer.name]
            trial = error()
            if trial < best:
                best, improved = trial, True
            else:
                flipped[layer.name] = not flipped[layer.name]
        if not improved:
            break
    scale = float(np.abs(expected).max(initial=0.0))
    if best > atol + rtol * scale:
        return {}
    return {layer.name: CONVOLUTION if flipped[layer.name] else CORRELATION for layer in kernels}
