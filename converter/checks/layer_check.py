"""Layer-level validation: each weighted layer run in the source framework with the *stored* source
arrays and in PyTorch with the *converted* tensors, on seeded random asymmetric inputs.

Source side, by what the source computes: the framework's *oracle* chosen by :data:`ORACLES`
(each lives in its framework's folder, see :mod:`weightport.core.oracle`):

* Keras kernels with correlation semantics: TensorFlow ops and Keras RNN layers, fed the arrays
  exactly as the file stores them (``weightport.formats.keras.oracle``).
* Convolution semantics (Theano-backend Keras, Theano/Lasagne): ``scipy.signal.convolve``
  (true convolution) over each input/output channel pair, and dense layers as ``x @ kernel`` in
  the stored layout (``weightport.formats.numpy.oracle``).
* ONNX sources: the layer's own ONNX operator with the stored initializers, as a one-node graph run
  by onnxruntime (``weightport.formats.onnx.oracle``).

Target side: standard ``torch.nn`` layers holding the converted tensors.  Our layout code is
never on both sides of a comparison.  When a layer fails, candidate mistakes (a flip, a swap of
two spatial axes, a gate reorder) are tried on the converted tensor and the one that makes it
pass is named as the likely cause.  A kernel equal to its own 180-degree rotation cannot reveal
a missing flip; that is reported as an ambiguity, not a pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import numpy as np

from weightport.checks.report import LAYER, SKIP, Check, compare
from weightport.core.layout import CONVOLUTION, Layout, flip_axes, relayout, reorder_blocks
from weightport.core.model import Layer, Model
from weightport.core.oracle import LayerCase

RUNNABLE = ("conv", "depthwise", "dense", "lstm", "gru")

# Which framework's oracle computes a layer, first match wins:
# (source format or "*", layer kinds, kernel semantics or "*", "module:function").
ORACLES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("onnx", RUNNABLE, "*", "weightport.formats.onnx.oracle:source_onnx"),
    ("*", ("conv", "depthwise"), CONVOLUTION, "weightport.formats.numpy.oracle:scipy_conv"),
    ("*", ("conv", "depthwise"), "*", "weightport.formats.keras.oracle:source_conv"),
    ("*", ("dense",), "*", "weightport.formats.numpy.oracle:source_dense"),
    ("*", ("lstm", "gru"), "*", "weightport.formats.keras.oracle:source_rnn"),
)


def stored_arrays(layer: Layer) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each tensor as the source file stores it, and its stored axis pattern."""
    arrays, patterns = {}, {}
    for name, tensor in layer.tensors.items():
        arrays[name] = np.asarray(tensor.read())
        patterns[name] = tensor.provenance.source_layout
    return arrays, patterns


def random_input(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


def spatial_size(kernel: tuple[int, ...], dilations: tuple[int, ...]) -> tuple[int, ...]:
    """An input size a little larger than the kernel's reach, different per axis (never square)."""
    return tuple((k - 1) * d + 4 + axis for axis, (k, d) in enumerate(zip(kernel, dilations)))


# -- target side ------------------------------------------------------------------------------------
class TargetSide(Protocol):
    """The converted file's runtime, one layer at a time (the torch target's is :class:`TorchSide`).

    ``output`` runs ``layer`` on ``x`` (canonical layout: channels-first, batch-first) with the
    converted weights as the target runtime reads them; it raises ``NotImplementedError`` with the
    reason when it cannot.  ``variants`` are the same side with one classic mistake undone each, so a
    failure can name its likely cause (none where the runtime cannot be altered).
    """

    def output(self, layer: Layer, x: np.ndarray) -> np.ndarray: ...

    def variants(self, layer: Layer) -> list[tuple[str, "TargetSide"]]: ...


class TorchSide:
    """PyTorch running the converted tensors (canonical layout), ``{layer: {param: array}}``."""

    def __init__(self, converted: dict[str, dict[str, np.ndarray]]) -> None:
        self.converted = converted

    def output(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        if layer.name not in self.converted:
            raise NotImplementedError("the converted file holds none of its tensors")
        return torch_output(layer, self.converted[layer.name], x)

    def variants(self, layer: Layer) -> list[tuple[str, "TargetSide"]]:
        if layer.name not in self.converted:
            return []
        return [(mistake, TorchSide({**self.converted, layer.name: tensors}))
                for mistake, tensors in candidate_mistakes(layer, self.converted[layer.name])]

    def tensors(self, layer: Layer) -> dict[str, np.ndarray]:
        return self.converted.get(layer.name, {})


def torch_output(layer: Layer, converted: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The layer in PyTorch (valid padding, stride/dilation/groups from the canonical attrs)."""
    import torch
    import torch.nn.functional as F
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in converted.items()}
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if layer.kind in ("conv", "depthwise"):
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.attrs["rank"]]
            return conv(xt, tensors["weight"], tensors.get("bias"), stride=layer.attrs["strides"],
                        dilation=layer.attrs["dilations"], groups=layer.attrs.get("groups", 1)).numpy()
        if layer.kind == "dense":
            return F.linear(xt, tensors["weight"], tensors.get("bias")).numpy()
        rnn_class = torch.nn.LSTM if layer.kind == "lstm" else torch.nn.GRU
        rnn = rnn_class(tensors["weight_ih_l0"].shape[1], layer.attrs["units"], batch_first=True)
        rnn.load_state_dict({k: v for k, v in tensors.items() if k.endswith("_l0")}, strict=True)
        return rnn(xt)[0].numpy()


def layer_input(layer: Layer, rng: np.random.Generator, stored: dict[str, np.ndarray]) -> np.ndarray:
    a = layer.attrs
    if layer.kind in ("conv", "depthwise"):
        spatial = spatial_size(tuple(a["kernel_size"]), tuple(a["dilations"]))
        return random_input(rng, (2, a["in_channels"], *spatial))
    if layer.kind == "dense":
        return random_input(rng, (2, layer.tensors["weight"].shape[1]))
    return random_input(rng, (2, 5, layer.tensors["weight_ih_l0"].shape[1]))


def oracle_for(case: LayerCase) -> Callable[[LayerCase, np.ndarray], np.ndarray]:
    """The oracle of :data:`ORACLES` that computes ``case``'s layer as its source framework does."""
    for source_format, kinds, semantics, name in ORACLES:
        if (source_format in ("*", case.source_format) and case.layer.kind in kinds
                and semantics in ("*", case.semantics)):
            module, _, function = name.partition(":")
            return getattr(importlib.import_module(module), function)
    raise NotImplementedError(f"no oracle runs {case.layer.kind} layers of {case.source_format} files")


def run_source(case: LayerCase, x: np.ndarray) -> np.ndarray:
    return oracle_for(case)(case, x)


# -- diagnosis ----------------------------------------------------------------------------------------
def candidate_mistakes(layer: Layer, converted: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Converted tensors with one classic mistake undone each: (name of the mistake, tensors)."""
    candidates = []
    if layer.kind in ("conv", "depthwise"):
        weight = converted["weight"]
        spatial = tuple(range(2, weight.ndim))
        candidates.append(("missing or extra 180-degree flip (convolution vs correlation)",
                           dict(converted, weight=flip_axes(weight, spatial).copy())))
        if weight.ndim == 4 and weight.shape[2] == weight.shape[3]:
            candidates.append(("kernel rows and columns swapped (H/W transposed)",
                               dict(converted, weight=relayout(weight, Layout("o i h w"), Layout("o i w h")))))
    if layer.kind == "dense":
        step = layer.tensors["weight"].transforms[0] if layer.tensors["weight"].transforms else None
        known = dict(getattr(step, "known", ()))
        if "c" in known:
            spatial = [a for a in ("d", "h", "w") if a in known]
            first, last = " ".join(["c"] + spatial), " ".join(spatial + ["c"])
            candidates.append(("Dense rows not permuted after Flatten (C,H,W vs H,W,C order)",
                               dict(converted, weight=relayout(converted["weight"], Layout(f"o ({last})"),
                                                               Layout(f"o ({first})"), known))))
    if layer.kind in ("lstm", "gru"):
        orders = [("ifco", "ifoc"), ("ifco", "icfo"), ("ifco", "iofc")] if layer.kind == "lstm" else [("zrh", "rzh")]
        for src, dst in orders:
            swapped = {k: reorder_blocks(v, 0, src, dst) if v.ndim >= 1 and v.shape[0] % len(src) == 0 else v
                       for k, v in converted.items()}
            candidates.append((f"RNN gates in the wrong order ({src} vs {dst})", swapped))
    return candidates


def ambiguity(layer: Layer, converted: dict[str, np.ndarray]) -> str | None:
    """Why a pass proves less than it seems: a flip-symmetric or transpose-symmetric kernel."""
    if layer.kind not in ("conv", "depthwise"):
        return None
    weight = converted["weight"]
    spatial = tuple(range(2, weight.ndim))
    notes = []
    if np.array_equal(weight, flip_axes(weight, spatial)):
        notes.append("kernel equals its 180-degree rotation, so a missing flip cannot be seen")
    if weight.ndim == 4 and weight.shape[2] == weight.shape[3] and np.array_equal(weight, weight.swapaxes(2, 3)):
        notes.append("kernel equals its H/W transpose, so swapped axes cannot be seen")
    return "; ".join(notes) or None


def check_layer(layer: Layer, side: TargetSide, atol: float, rtol: float, seed: int = 0,
                semantics: str | None = None, source_format: str = "", source_version: str | None = None) -> Check:
    """Run one layer on both sides and compare; name the likely cause of a failure.

    The source side runs twice where its oracle can: with the stored float32 arrays and in float64;
    the float64 output is the reference and their difference the source's own float32 noise.
    """
    stored, patterns = stored_arrays(layer)
    kernel = layer.tensors.get("weight")
    source_semantics = semantics or (kernel.provenance.source_semantics if kernel is not None else "none")
    case = LayerCase(layer, stored, patterns, source_semantics, source_format, source_version)
    rng = np.random.default_rng(seed)
    x = layer_input(layer, rng, stored)
    name = f"layer {layer.name} ({layer.source_class or layer.kind})"
    where = {"layer": layer.name, "kind": layer.kind}
    try:
        expected = run_source(case, x)
    except NotImplementedError as reason:
        return Check(name, SKIP, LAYER, **where, reason=str(reason))
    except ImportError as error:
        return Check(name, SKIP, LAYER, **where,
                     reason=f"{error.name or 'a framework'} is not installed (pip install 'weightport[all]')")
    except Exception as error:  # the source framework refused the layer: report, do not crash
        return Check(name, SKIP, LAYER, **where,
                     reason=f"the source framework could not run it ({type(error).__name__}: {first_line(error)})")
    expected, noise = with_float64_reference(case, x, expected)
    try:
        got = side.output(layer, x)
    except NotImplementedError as reason:
        return Check(name, SKIP, LAYER, **where, reason=f"the target runtime cannot run it: {reason}")
    check = compare(name, got, expected, atol, rtol, check=LAYER, **where, noise=noise)
    note = ambiguity(layer, getattr(side, "tensors", lambda _: {})(layer))
    if check.passed and note:
        check.reason = f"ambiguous: {note}"
    if not check.passed:
        for mistake, variant in side.variants(layer):
            if compare(name, variant.output(layer, x), expected, atol, rtol, noise=noise).passed:
                check.likely_cause = mistake
                break
    return check


def with_float64_reference(case: LayerCase, x: np.ndarray, expected32: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The source's float64 output as the reference and its float32 noise, where the oracle runs float64."""
    if expected32.dtype != np.float32:
        return expected32, None
    wide = replace(case, stored={k: v.astype(np.float64) if v.dtype == np.float32 else v
                                 for k, v in case.stored.items()})
    try:
        expected64 = np.asarray(run_source(wide, x.astype(np.float64)), dtype=np.float64)
    except Exception:  # the oracle runs float32 only (onnxruntime's RNNs, for one): no noise figure
        return expected32, None
    if expected64.shape != expected32.shape:
        return expected32, None
    return expected64, float(np.abs(expected64 - expected32.astype(np.float64)).max(initial=0.0))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def check_layers(source: Model, side: TargetSide, atol: float, rtol: float) -> list[Check]:
    """A :class:`Check` per weighted layer of ``source`` against the target runtime (a skip says why not)."""
    checks = []
    for seed, layer in enumerate(source.layers):
        if not layer.tensors:
            continue
        name = f"layer {layer.name} ({layer.source_class or layer.kind})"
        where = {"layer": layer.name, "kind": layer.kind}
        if layer.kind not in RUNNABLE:
            checks.append(Check(name, SKIP, LAYER, **where, reason=f"no layer-level oracle for {layer.kind} layers"))
        elif layer.attrs.get("time_distributed"):
            checks.append(Check(name, SKIP, LAYER, **where, reason="TimeDistributed layers are checked whole-model"))
        else:
            checks.append(check_layer(layer, side, atol, rtol, seed,
                                      source_format=source.source.format, source_version=source.source.version))
    return checks
