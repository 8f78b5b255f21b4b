"""Layer-level validation: each weighted layer run in the source framework with the *stored* source
arrays and in PyTorch with the *converted* tensors, on seeded random asymmetric inputs.

Source side, by what the source computes: the framework's *oracle* chosen by :data:`ORACLES`
(each lives in its framework's folder, see :mod:`weightport.core.oracle`):

* Keras kernels with correlation semantics: TensorFlow ops (conv, grouped conv, depthwise, separable,
  ``conv_transpose``) fed the arrays exactly as the file stores them, and Keras's own BatchNormalization, LayerNormalization,
  Embedding, PReLU formula and LSTM/GRU layers (``go_backwards``, ``Bidirectional``)
  (``weightport.formats.keras.oracle``).
* Convolution semantics (Theano-backend Keras, Theano/Lasagne), and every kernel of a Theano pickle:
  ``scipy.signal.convolve`` / ``correlate`` over each input/output channel pair (strides subsample the
  output, dilations dilate the kernel, groups one at a time; a transposed conv as a full correlation of
  the stride-dilated input, as Theano's ``conv2d`` gradient computes it), dense layers as ``x @ kernel``
  in the stored layout, Lasagne's batch norm with its stored ``inv_std`` (``weightport.formats.numpy.oracle``).
* ONNX sources: the layer's own ONNX operator with the stored initializers, as a one-node graph run by
  onnxruntime (``weightport.formats.onnx.oracle``).

Every layer runs with valid padding (and no output padding): the check is about the weights; padding is
the whole-model check's.  A recurrent layer returns its whole sequence in the canonical module's
convention (formats/torch/module.py): a backwards layer reads the steps last to first and returns its
outputs in that order, a bidirectional one concatenates its forward and backward halves per step.

Target side: ``torch.nn.functional`` (and ``torch.nn.LSTM``/``GRU``) holding the converted tensors in the
canonical layouts (weightport.core.model).  Our layout code is never on both sides of a comparison.  When
a layer fails, candidate mistakes (a flip, a swap of two spatial axes, a gate reorder, swapped batch-norm
vectors, ...) are tried on the converted tensors and the one that makes it pass is named as the likely
cause.  A kernel equal to its own 180-degree rotation (or H/W transpose) cannot reveal a missing flip (or
swap); that is reported as an ambiguity, not a plain pass, unless the kernel is 1 wide on those axes (a
flip cannot change it, so nothing is hidden).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import numpy as np

from weightport.checks.report import FAIL, LAYER, PASS, SKIP, Check, compare
from weightport.core.layout import CONVOLUTION, NO_SEMANTICS, Layout, flip_axes, relayout, reorder_blocks
from weightport.core.model import Layer, Model
from weightport.core.oracle import LayerCase

CONV_KINDS = ("conv", "conv_transpose", "depthwise", "separable")
RUNNABLE = CONV_KINDS + ("dense", "batchnorm", "layernorm", "embedding", "prelu", "lstm", "gru", "constant")
THEANO = "theano_pickle"
# Layers whose tensors every target keeps as the source stores them (an ONNX constant outside any layer, a
# custom layer under --keep-unknown, a torch module's own parameters): checked by value where the target
# side reads them (``side.kept``), bit for bit, not run.
KEPT = ("constant", "custom", "other")

# Which framework's oracle computes a layer, first match wins:
# (source format or "*", layer kinds, kernel semantics or "*", "module:function").
ORACLES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("onnx", ("constant",), "*", "weightport.formats.onnx.oracle:source_constant"),  # a kept graph constant
    ("onnx", RUNNABLE, "*", "weightport.formats.onnx.oracle:source_onnx"),
    ("caffe", ("conv", "conv_transpose", "dense", "batchnorm", "prelu"), "*", "weightport.formats.caffe.oracle:opencv_layer"),
    ("torch7", ("conv", "conv_transpose", "dense", "batchnorm", "prelu"), "*", "weightport.formats.torch7.oracle:opencv_module"),
    ("*", ("constant",), "*", "weightport.formats.numpy.oracle:source_constant"),
    (THEANO, CONV_KINDS, "*", "weightport.formats.numpy.oracle:scipy_conv"),  # conv2d with or without filter_flip
    ("*", CONV_KINDS, CONVOLUTION, "weightport.formats.numpy.oracle:scipy_conv"),
    ("*", CONV_KINDS, "*", "weightport.formats.keras.oracle:source_conv"),
    ("*", ("dense",), "*", "weightport.formats.numpy.oracle:source_dense"),
    (THEANO, ("batchnorm",), "*", "weightport.formats.numpy.oracle:lasagne_batchnorm"),
    ("*", ("batchnorm",), "*", "weightport.formats.keras.oracle:source_batchnorm"),
    ("*", ("layernorm",), "*", "weightport.formats.keras.oracle:source_layernorm"),
    ("*", ("embedding",), "*", "weightport.formats.keras.oracle:source_embedding"),
    ("*", ("prelu",), "*", "weightport.formats.keras.oracle:source_prelu"),
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


def spatial_size(kernel: tuple[int, ...], dilations: tuple[int, ...], strides: tuple[int, ...] | None = None
                 ) -> tuple[int, ...]:
    """An input size giving a few output samples past the kernel's reach at each stride, different per axis
    (never square)."""
    strides = strides or (1,) * len(kernel)
    return tuple((k - 1) * d + 1 + s * (3 + axis) for axis, (k, d, s) in enumerate(zip(kernel, dilations, strides)))


# -- target side ------------------------------------------------------------------------------------
class TargetSide(Protocol):
    """The converted file's runtime, one layer at a time (the torch target's is :class:`TorchSide`).

    ``output`` runs ``layer`` on ``x`` (canonical layout: channels-first, batch-first) with the
    converted weights as the target runtime reads them; it raises ``NotImplementedError`` with the
    reason when it cannot.  ``variants`` are the same side with one classic mistake undone each, so a
    failure can name its likely cause (none where the runtime cannot be altered).  A side may also have
    ``kept(layer) -> {param: array}``: a kept layer's (:data:`KEPT`) arrays as it reads them, then checked
    by value against the source's stored tensors, bit for bit (:func:`kept_check`).
    """

    def output(self, layer: Layer, x: np.ndarray) -> np.ndarray: ...

    def variants(self, layer: Layer) -> list[tuple[str, "TargetSide"]]: ...


# Attributes no tensor shows that the converted file records itself (weightport's graph metadata) and the
# target side computes with, in place of the source's: a wrong one there fails the layer's check.
RECORDED_ATTRS = ("epsilon",)


class TorchSide:
    """PyTorch running the converted tensors (canonical layout), ``{layer: {param: array}}``, with the
    converted file's own :data:`RECORDED_ATTRS` where it records them (``{layer: attrs}``)."""

    def __init__(self, converted: dict[str, dict[str, np.ndarray]],
                 recorded: dict[str, dict[str, object]] | None = None) -> None:
        self.converted = converted
        self.recorded = recorded or {}

    def output(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        if layer.name not in self.converted:
            raise NotImplementedError("the converted file holds none of its tensors")
        own = {k: v for k, v in self.recorded.get(layer.name, {}).items() if k in RECORDED_ATTRS and k in layer.attrs}
        return torch_output(replace(layer, attrs={**layer.attrs, **own}) if own else layer,
                            self.converted[layer.name], x)

    def variants(self, layer: Layer) -> list[tuple[str, "TargetSide"]]:
        if layer.name not in self.converted:
            return []
        found = [(mistake, TorchSide({**self.converted, layer.name: tensors}, self.recorded))
                 for mistake, tensors in candidate_mistakes(layer, self.converted[layer.name])]
        own = self.recorded.get(layer.name, {})
        for attr in RECORDED_ATTRS:
            if attr in own and attr in layer.attrs and own[attr] != layer.attrs[attr]:
                found.append((f"{attr} {own[attr]} recorded in the converted file, the source's is {layer.attrs[attr]}",
                              TorchSide(self.converted, {**self.recorded, layer.name: {}})))
        return found

    def tensors(self, layer: Layer) -> dict[str, np.ndarray]:
        return self.converted.get(layer.name, {})


def torch_output(layer: Layer, converted: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The layer in PyTorch on the converted (canonical) tensors: valid padding, no output padding,
    stride/dilation/groups from the canonical attrs; an RNN returns its whole sequence."""
    import torch
    import torch.nn.functional as F
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in converted.items()}  # writable copies
    xt = torch.from_numpy(np.array(x))
    kind, a = layer.kind, layer.attrs
    with torch.no_grad():
        if kind == "constant":  # the buffer the torch module outputs
            return tensors["value"].numpy()
        if kind in CONV_KINDS:
            rank = a["rank"]
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
            if kind == "conv_transpose":
                transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
                return transpose(xt, tensors["weight"], tensors.get("bias"), stride=a["strides"], padding=0,
                                 output_padding=0, groups=a.get("groups", 1), dilation=a["dilations"]).numpy()
            if kind == "separable":
                depth = conv(xt, tensors["depthwise.weight"], None, stride=a["strides"], dilation=a["dilations"],
                             groups=xt.shape[1])
                return conv(depth, tensors["pointwise.weight"], tensors.get("pointwise.bias")).numpy()
            return conv(xt, tensors["weight"], tensors.get("bias"), stride=a["strides"],
                        dilation=a["dilations"], groups=a.get("groups", 1)).numpy()
        if kind == "dense":
            return F.linear(xt, tensors["weight"], tensors.get("bias")).numpy()
        if kind == "batchnorm":
            return F.batch_norm(xt, tensors["running_mean"], tensors["running_var"], tensors.get("weight"),
                                tensors.get("bias"), training=False, eps=float(a["epsilon"])).numpy()
        if kind == "layernorm":  # over the features of (batch, steps, features)
            return F.layer_norm(xt, (xt.shape[-1],), tensors["weight"], tensors["bias"], eps=float(a["epsilon"])).numpy()
        if kind == "embedding":
            return F.embedding(xt, tensors["weight"]).numpy()
        if kind == "prelu":
            slope = tensors["weight"]
            if slope.dim() == 1:
                return F.prelu(xt, slope).numpy()  # one slope per channel (axis 1)
            return torch.where(xt >= 0, xt, slope * xt).numpy()  # one per element, (C, spatial...)
        rnn_class = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        bidirectional = bool(a.get("bidirectional"))
        rnn = rnn_class(tensors["weight_ih_l0"].shape[1], a["units"], batch_first=True, bidirectional=bidirectional,
                        bias="bias_ih_l0" in tensors)
        rnn.load_state_dict({k: v for k, v in tensors.items() if "_l0" in k}, strict=True)
        if a.get("go_backwards"):
            xt = torch.flip(xt, dims=[1])  # read last to first; outputs in reading order (module.keras_recurrent)
        return rnn(xt)[0].numpy()


def layer_input(layer: Layer, rng: np.random.Generator, stored: dict[str, np.ndarray]) -> np.ndarray:
    """A seeded random input for ``layer`` in the canonical layout: channels-first maps for convs, batch
    norms and PReLUs, ``(batch, features)`` for a dense, indices for an embedding, ``(batch, time,
    features)`` for an RNN."""
    a = layer.attrs
    if layer.kind == "constant":  # its output is its value, whatever the input
        return random_input(rng, (1,))
    if layer.kind == "conv_transpose":
        return random_input(rng, (2, a["in_channels"], *(3 + axis for axis in range(a["rank"]))))
    if layer.kind in CONV_KINDS:
        spatial = spatial_size(tuple(a["kernel_size"]), tuple(a["dilations"]), tuple(a["strides"]))
        return random_input(rng, (2, a["in_channels"], *spatial))
    if layer.kind == "dense":
        return random_input(rng, (2, layer.tensors["weight"].shape[1]))
    if layer.kind == "layernorm":
        return random_input(rng, (2, 3, layer.tensors["weight"].shape[0]))
    if layer.kind == "embedding":
        return rng.integers(0, layer.tensors["weight"].shape[0], size=(2, 5), dtype=np.int64)
    if layer.kind in ("batchnorm", "prelu"):
        weight = layer.tensors["running_mean" if layer.kind == "batchnorm" else "weight"].shape
        shape = tuple(layer.output_shape or ())
        if len(weight) > 1:  # one PReLU slope per element: the map is the slope's shape
            return random_input(rng, (2, *weight))
        known = len(shape) > 1 and shape[0] == weight[0] and all(isinstance(n, int) and n > 0 for n in shape)
        return random_input(rng, (2, *shape) if known else (2, weight[0]))
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
KERNELS = {"conv": "weight", "conv_transpose": "weight", "depthwise": "weight", "separable": "depthwise.weight"}
FLIP = "missing or extra 180-degree flip (convolution vs correlation)"
SWAP_HW = "kernel rows and columns swapped (H/W transposed)"


def spatially_altered(layer: Layer, converted: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The kernel flipped, and with H and W swapped where they are equal: each only where it changes the
    kernel's shape-compatible values (a 1-wide axis cannot be flipped)."""
    param = KERNELS[layer.kind]
    weight = converted.get(param)
    if weight is None or weight.ndim < 3:
        return []
    spatial = tuple(range(2, weight.ndim))
    found = []
    if any(weight.shape[axis] > 1 for axis in spatial):
        found.append((FLIP, {**converted, param: flip_axes(weight, spatial).copy()}))
    if weight.ndim == 4 and weight.shape[2] == weight.shape[3] > 1:
        found.append((SWAP_HW, {**converted, param: np.ascontiguousarray(weight.swapaxes(2, 3))}))
    return found


def candidate_mistakes(layer: Layer, converted: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Converted tensors with one classic mistake undone each: (name of the mistake, tensors)."""
    candidates = []
    kind = layer.kind
    if kind in CONV_KINDS:
        candidates += spatially_altered(layer, converted)
        weight = converted.get("weight")
        if kind == "conv_transpose" and weight is not None and weight.shape[0] == weight.shape[1] \
                and layer.attrs.get("groups", 1) == 1:
            candidates.append(("transposed-conv kernel read as a conv kernel (in and out channel axes swapped)",
                               dict(converted, weight=np.ascontiguousarray(weight.swapaxes(0, 1)))))
    if kind == "dense":
        step = layer.tensors["weight"].transforms[0] if layer.tensors["weight"].transforms else None
        known = dict(getattr(step, "known", ()))
        if "c" in known:
            spatial = [a for a in ("d", "h", "w") if a in known]
            first, last = " ".join(["c"] + spatial), " ".join(spatial + ["c"])
            candidates.append(("Dense rows not permuted after Flatten (C,H,W vs H,W,C order)",
                               dict(converted, weight=relayout(converted["weight"], Layout(f"o ({last})"),
                                                               Layout(f"o ({first})"), known))))
    if kind in ("batchnorm", "layernorm"):
        candidates += batchnorm_mistakes(layer, converted)
    if kind in ("lstm", "gru"):
        orders = [("ifco", "ifoc"), ("ifco", "icfo"), ("ifco", "iofc")] if kind == "lstm" else [("zrh", "rzh")]
        for src, dst in orders:
            swapped = {k: reorder_blocks(v, 0, src, dst) if v.ndim >= 1 and v.shape[0] % len(src) == 0 else v
                       for k, v in converted.items()}
            candidates.append((f"RNN gates in the wrong order ({src} vs {dst})", swapped))
        if layer.attrs.get("bidirectional"):
            candidates.append(("RNN directions swapped (forward and backward weights exchanged)",
                               {k: converted.get(k[:-len("_reverse")] if k.endswith("_reverse") else k + "_reverse", v)
                                for k, v in converted.items()}))
    return candidates


def batchnorm_mistakes(layer: Layer, converted: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """A batch norm's classic mistakes: vectors exchanged, a variance stored as something else."""
    found = []
    if {"weight", "bias"} <= converted.keys():
        found.append(("gamma and beta swapped", dict(converted, weight=converted["bias"], bias=converted["weight"])))
    var = converted.get("running_var")
    if var is None or "running_mean" not in converted:
        return found
    found.append(("running mean and variance swapped",
                  dict(converted, running_mean=var, running_var=converted["running_mean"])))
    wide = var.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if np.all(wide >= 0):
            found.append(("running_var squared (a variance taken for a standard deviation, e.g. Keras 1's "
                          "running_std, which holds the variance)",
                          dict(converted, running_var=np.sqrt(wide).astype(var.dtype))))
            found.append(("running_var is a standard deviation (not squared)",
                          dict(converted, running_var=(wide * wide).astype(var.dtype))))
        if np.all(wide > 0) and "epsilon" in layer.attrs:
            found.append(("running_var holds Lasagne's inv_std, not converted (var = 1/inv_std^2 - epsilon)",
                          dict(converted, running_var=(1 / (wide * wide) - float(layer.attrs["epsilon"]))
                               .astype(var.dtype))))
    return found


def ambiguity(layer: Layer, converted: dict[str, np.ndarray]) -> str | None:
    """Why a pass proves less than it seems: a kernel equal to its 180-degree rotation, or to its H/W
    transpose, where that could hide a mistake (a kernel 1 wide on those axes hides nothing)."""
    param = KERNELS.get(layer.kind)
    weight = converted.get(param) if param else None
    if weight is None or weight.ndim < 3:
        return None
    spatial = tuple(range(2, weight.ndim))
    notes = []
    if any(weight.shape[axis] > 1 for axis in spatial) and np.array_equal(weight, flip_axes(weight, spatial)):
        notes.append("kernel equals its 180-degree rotation, so a missing flip cannot be seen")
    if weight.ndim == 4 and weight.shape[2] == weight.shape[3] > 1 and np.array_equal(weight, weight.swapaxes(2, 3)):
        notes.append("kernel equals its H/W transpose, so swapped axes cannot be seen")
    return "; ".join(notes) or None


def kernel_semantics(layer: Layer) -> str:
    """The semantics the source stored the layer's kernel with (``none`` for a layer without a kernel)."""
    for tensor in layer.tensors.values():
        if tensor.provenance.source_semantics != NO_SEMANTICS:
            return tensor.provenance.source_semantics
    return NO_SEMANTICS


def check_layer(layer: Layer, side: TargetSide, atol: float, rtol: float, seed: int = 0,
                semantics: str | None = None, source_format: str = "", source_version: str | None = None) -> Check:
    """Run one layer on both sides and compare; name the likely cause of a failure.

    The source side runs twice where its oracle can: with the stored float32 arrays and in float64;
    the float64 output is the reference and their difference the source's own float32 noise.
    """
    stored, patterns = stored_arrays(layer)
    source_semantics = semantics or kernel_semantics(layer)
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
            try:
                undone = variant.output(layer, x)
            except (NotImplementedError, RuntimeError, ValueError):  # a variant the runtime cannot hold
                continue
            if compare(name, undone, expected, atol, rtol, noise=noise).passed:
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
        expected64 = np.asarray(run_source(wide, x.astype(np.float64) if x.dtype.kind == "f" else x),
                                dtype=np.float64)
    except Exception:  # the oracle runs float32 only (onnxruntime's RNNs, for one): no noise figure
        return expected32, None
    if expected64.shape != expected32.shape:
        return expected32, None
    return expected64, float(np.abs(expected64 - expected32.astype(np.float64)).max(initial=0.0))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def bitwise_difference(stored: np.ndarray, got: np.ndarray) -> str | None:
    """Why ``got`` (a kept tensor as the target runtime reads it) is not ``stored`` (the source's tensor as
    its file stores it) bit for bit, or None: same count of values in the same row-major order, the stored
    values cast to ``got``'s dtype (the output's declared dtype), compared as bytes in native byte order."""
    if got.size != stored.size:
        return f"{got.size} values where the source stores {stored.size}"
    native = got.dtype.newbyteorder("=")
    got_flat = np.ascontiguousarray(got.astype(native)).reshape(-1)
    want = np.ascontiguousarray(stored.astype(native)).reshape(-1)
    if got_flat.tobytes() == want.tobytes():
        return None
    differs = (got_flat.view(np.uint8).reshape(got_flat.size, -1) != want.view(np.uint8).reshape(want.size, -1)).any(1)
    first = int(np.flatnonzero(differs)[0])
    return (f"{int(differs.sum())} of {got.size} values differ from the source's stored ones (first at flat index "
            f"{first}: {got_flat[first].item()!r}, the source stores {want[first].item()!r})")


def kept_check(layer: Layer, side: TargetSide) -> Check | None:
    """A kept layer's tensors (:data:`KEPT`) as the target side reads them against the source's stored
    tensors, bit for bit; None where the side cannot hand them over (it is then checked as any layer)."""
    values = getattr(side, "kept", None)
    if values is None:
        return None
    name = f"layer {layer.name} ({layer.source_class or layer.kind})"
    where = {"layer": layer.name, "kind": layer.kind}
    try:
        got = values(layer)
    except NotImplementedError as reason:
        return Check(name, SKIP, LAYER, **where, reason=f"the target runtime cannot read it: {reason}")
    problems = []
    for param, tensor in layer.tensors.items():
        if param not in got:
            problems.append(f"{param} is missing")
            continue
        differs = bitwise_difference(np.asarray(tensor.read()), np.asarray(got[param]))
        if differs:
            problems.append(f"{param}: {differs}")
    return Check(name, FAIL if problems else PASS, LAYER, **where, reason="; ".join(problems) if problems
                 else "kept as stored: equal to the source's tensors bit for bit")


def check_layers(source: Model, side: TargetSide, atol: float, rtol: float) -> list[Check]:
    """A :class:`Check` per weighted layer of ``source`` against the target runtime (a skip says why not);
    a kept layer (:data:`KEPT`) by value, bit for bit, where the side reads kept tensors (``side.kept``)."""
    checks = []
    for seed, layer in enumerate(source.layers):
        if not layer.tensors:
            continue
        name = f"layer {layer.name} ({layer.source_class or layer.kind})"
        where = {"layer": layer.name, "kind": layer.kind}
        by_value = kept_check(layer, side) if layer.kind in KEPT else None
        if by_value is not None:
            checks.append(by_value)
        elif layer.kind not in RUNNABLE:
            checks.append(Check(name, SKIP, LAYER, **where, reason=f"no layer-level oracle for {layer.kind} layers"))
        else:  # a TimeDistributed layer is its inner layer applied at each step: checked as that layer
            checks.append(check_layer(layer, side, atol, rtol, seed,
                                      source_format=source.source.format, source_version=source.source.version))
    return checks
