"""Checking a converted output in NumPy and scipy, reading it the way any runtime would: the arrays as
the file holds them and what the file *declares* about each (its axis order, its kernel semantics),
never weightport's writers or its layout code (``weightport.core.layout``, ``weightport.core.steps``).

What every array target (``npz`` here, ``raw``/``java`` in :mod:`weightport.formats.plain.target_check`,
``theano`` in :mod:`weightport.formats.theano.target_check`) shares:

* :func:`parse_axes` reads a declared layout (``OIHW``, ``HWIO``, ``(IM)1HW``, ``(HWC)O``, ``h w i o``) into
  its axes, and :func:`declared_shape` says which shape a source tensor must have in it;
* :class:`DeclaredSide` is a target side for :func:`weightport.checks.layer_check.check_layers`: each layer
  computed from the declared arrays, kernels found by their declared axis names and slid with
  ``scipy.signal.correlate`` or ``scipy.signal.convolve`` as their declared semantics say, a Dense fed its
  features in the runtime's flatten order, Lasagne's ``inv_std`` used as it is, RNN gates in PyTorch order;
* :func:`structure_problems`: what differs from "every tensor of every weighted source layer present, with
  the shape its declared layout gives";
* :func:`read_npz`: an npz output's arrays (``.npy`` members read with ``allow_pickle=False``, each header
  checked against its member first) with its JSON sidecar's layouts and semantics.

These are the runtime's half of a check.  The validators that turn them into checks and a report live in
the check layer (:mod:`weightport.checks.targets`), which sits above the frameworks (docs/architecture.md):
nothing here imports it, by statement or by name.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from weightport.core.budget import check_archive_members, check_stored_bytes, declared_elements, file_size
from weightport.core.describe import parse_json
from weightport.core.model import Layer, Model
from weightport.core.shapes import feeding_flatten, flattened_map_shape

CORRELATION, CONVOLUTION = "correlation", "convolution"
SPATIAL = "dhw"
FEATURES = frozenset("cdhw")  # letters of a flattened feature map (a Dense input after Flatten)
FLOAT16_RTOL = 16 * 2.0 ** -11  # 16 float16 ulps of the scale: what storing weights in float16 costs
KERNELS = {"conv": "weight", "depthwise": "weight", "conv_transpose": "weight", "separable": "depthwise.weight"}


# ------------------------------------------------------------------------------- declared layouts


@dataclass(frozen=True)
class Declared:
    """One array of a converted output, as the file holds it, with what the file says about it."""

    array: np.ndarray
    layout: str                # the declared axis order: "OIHW", "HWIO", "(IM)1HW", "(HWC)O", "h w i o", "O", ...
    semantics: str = "none"    # correlation, convolution (kernels) or none


def axis_tokens(layout: str) -> list[str]:
    """A declared layout's tokens: parentheses, ``1`` (a unit axis) and axis names, each a letter, or a
    letter with its index where the layout names a kept tensor's axes by number (``k0 k1 k2``, ``K0K1K2``,
    ``x0 x1``, ``a0``, ``c x0 x1``): a letter's digits are its index when they are ``0`` or the index after
    that letter's previous one, so ``C11`` and ``O1HW`` still read as unit axes."""
    tokens: list[str] = []
    last: dict[str, int] = {}
    text = layout.replace(" ", "").lower()
    at = 0
    while at < len(text):
        char, end = text[at], at + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        digits = text[at + 1:end]
        if char.isalpha() and digits and int(digits) == last.get(char, -1) + 1 and (digits == "0" or char in last):
            last[char] = int(digits)
            tokens.append(char + digits)
            at = end
        else:
            tokens.append(char)
            at += 1
    return tokens


def parse_axes(layout: str) -> tuple[tuple[str, ...], ...]:
    """The axes of a declared layout, each as its names: ``"(IM)1HW"`` and ``"(i m) 1 h w"`` are both
    ``(("i", "m"), (), ("h",), ("w",))``; ``1`` is a unit axis, parentheses merge letters into one axis; a
    kept tensor's numbered axes (``"k0 k1"``, ``"K0K1"``) are ``(("k0",), ("k1",))`` (:func:`axis_tokens`)."""
    axes: list[tuple[str, ...]] = []
    merged: list[str] | None = None
    for token in axis_tokens(layout):
        if token == "(" and merged is None:
            merged = []
        elif token == ")" and merged:
            axes.append(tuple(merged))
            merged = None
        elif token[0].isalpha():
            if merged is None:
                axes.append((token,))
            else:
                merged.append(token)
        elif token == "1" and merged is None:
            axes.append(())
        else:
            raise ValueError(f"layout {layout!r} is not an axis order (letters, numbered axes, 1, parentheses)")
    if merged is not None:
        raise ValueError(f"layout {layout!r} has an unclosed parenthesis")
    return tuple(axes)


def role(axis: tuple[str, ...]) -> str:
    """What an axis is: ``o`` (output channels; a depthwise ``(i m)`` too), ``i`` (input channels; a
    flattened map ``(c h w)`` too), a spatial letter, ``1`` (unit), or its own letter (``c``, ``n``, ...)."""
    if axis in (("o",), ("i", "m")):
        return "o"
    if not axis:
        return "1"
    if len(axis) == 1:
        return axis[0]
    if set(axis) <= FEATURES:
        return "i"
    raise ValueError(f"axis ({' '.join(axis)}) is not one this check reads")


def roles(layout: str) -> list[str]:
    return [role(axis) for axis in parse_axes(layout)]


def declared_shape(source_pattern: str, source_shape: tuple[int, ...], layout: str) -> tuple[int, ...] | None:
    """The shape a source tensor (canonical ``source_pattern`` and shape) has in the declared ``layout``, or
    None when the layout is not a rearrangement of the source's axes."""
    src, dst = roles(source_pattern), roles(layout)
    if sorted(src) != sorted(dst) or len(src) != len(source_shape):
        return None
    sizes: dict[str, list[int]] = {}
    for name, size in zip(src, source_shape):
        sizes.setdefault(name, []).append(int(size))
    return tuple(sizes[name].pop(0) for name in dst)


def kernel(item: Declared, rank: int, transposed: bool = False) -> np.ndarray:
    """A kernel as ``(O, I, spatial...)`` in float64 (``(I, O, spatial...)`` for a transposed convolution,
    whose ``i`` axis is the one it reads from), its axes found by their declared names; spatial axes in
    D, H, W order; a unit axis stands for ``I`` when none is named (a depthwise ``(IM)1HW``)."""
    names = roles(item.layout)
    if len(names) != item.array.ndim or "o" not in names:
        raise NotImplementedError(f"kernel layout {item.layout!r} does not name its {item.array.ndim} axes")
    out = names.index("o")
    into = names.index("i") if "i" in names else names.index("1") if "1" in names else None
    spatial = [k for k in range(len(names)) if k not in (out, into)]
    if into is None or len(spatial) != rank or any(names[k] not in SPATIAL + "1" for k in spatial):
        raise NotImplementedError(f"kernel layout {item.layout!r} is not a rank-{rank} convolution kernel's")
    spatial.sort(key=lambda k: (SPATIAL + "1").index(names[k]))
    order = [into, out] if transposed else [out, into]
    return np.transpose(np.asarray(item.array, dtype=np.float64), order + spatial)


def two_axes(item: Declared, first: str, second: str, what: str) -> np.ndarray:
    """A 2-D array as ``(first, second)`` in float64, by its declared axis names."""
    names = roles(item.layout)
    if sorted(names) != sorted((first, second)) or item.array.ndim != 2:
        raise NotImplementedError(f"layout {item.layout!r} is not {what}")
    array = np.asarray(item.array, dtype=np.float64)
    return array if names == [first, second] else array.T


def matrix(item: Declared) -> np.ndarray:
    """A 2-D weight as ``(out, in)``, by its declared ``O``/``I`` axes."""
    return two_axes(item, "o", "i", "a matrix of outputs and inputs")


def vector(declared: Mapping[str, Declared], param: str, size: int, default: float | None = None) -> np.ndarray:
    if param not in declared:
        if default is None:
            raise NotImplementedError(f"tensor {param!r} is missing")
        return np.full(size, default)
    array = np.asarray(declared[param].array, dtype=np.float64).reshape(-1)
    if array.size != size:
        raise NotImplementedError(f"{param} holds {array.size} values, the layer has {size}")
    return array


# ------------------------------------------------------------------------------------ the runtime


def sliding(semantics: str) -> Callable[..., np.ndarray]:
    """scipy's own operation for a kernel stored with ``semantics``."""
    import scipy.signal
    if semantics == CORRELATION:
        return scipy.signal.correlate
    if semantics == CONVOLUTION:
        return scipy.signal.convolve
    raise NotImplementedError(f"kernel semantics {semantics!r} is neither correlation nor convolution")


def dilated(weights: np.ndarray, dilations: tuple[int, ...]) -> np.ndarray:
    """A ``(A, B, k...)`` kernel with ``dilation - 1`` zeros between its taps."""
    if all(d == 1 for d in dilations):
        return weights
    grown = np.zeros(weights.shape[:2] + tuple((k - 1) * d + 1 for k, d in zip(weights.shape[2:], dilations)))
    grown[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilations)] = weights
    return grown


def conv(x: np.ndarray, weights: np.ndarray, bias: np.ndarray | None, semantics: str, strides: tuple[int, ...],
         dilations: tuple[int, ...], groups: int) -> np.ndarray:
    """``y[n, o] = sum_i slide(x[n, g*I + i], w[o, i]) + b[o]`` over o's group g, 'valid', then strided.

    ``slide`` is scipy's correlate or convolve over all of ``x[n, group]`` and ``w[o]`` at once: equal
    lengths on the channel axis make 'valid' sum over it.  convolve mirrors every axis, the channel axis
    too, so the kernel's channel axis is given reversed: channel i still meets kernel channel i."""
    slide = sliding(semantics)
    weights = dilated(weights, dilations)
    out, per_group = weights.shape[:2]
    if x.shape[1] != per_group * groups or out % groups:
        raise NotImplementedError(f"{x.shape[1]} input channels, kernel of {per_group} per group in {groups} groups")
    step = (0,) + tuple(slice(None, None, s) for s in strides)
    rows = []
    for sample in x:
        channels = []
        for o in range(out):
            g = o // (out // groups)
            taps = weights[o] if semantics == CORRELATION else weights[o][::-1]
            channels.append(slide(sample[g * per_group:(g + 1) * per_group], taps, mode="valid")[step])
        rows.append(np.stack(channels))
    y = np.stack(rows)
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.ndim - 2))


def conv_transpose(x: np.ndarray, weights: np.ndarray, bias: np.ndarray | None, semantics: str,
                   strides: tuple[int, ...], dilations: tuple[int, ...], groups: int) -> np.ndarray:
    """Transposed convolution, no cropping: ``x[c, p] * w[c, j, k]`` lands on ``y[g*J + j, p*stride + k*dilation]``.

    That is the full true convolution of x (zeros between its samples, for the stride) with the dilated
    kernel, for a kernel stored for correlation (TensorFlow's, PyTorch's); a kernel stored rotated
    (convolution semantics) is read rotated back, i.e. by a full correlation."""
    import scipy.signal
    if semantics not in (CORRELATION, CONVOLUTION):
        raise NotImplementedError(f"kernel semantics {semantics!r} is neither correlation nor convolution")
    slide = scipy.signal.convolve if semantics == CORRELATION else scipy.signal.correlate
    weights = dilated(weights, dilations)
    channels, per_group = weights.shape[:2]
    if x.shape[1] != channels or channels % groups:
        raise NotImplementedError(f"{x.shape[1]} input channels, kernel for {channels} in {groups} groups")
    spread = np.zeros(x.shape[:2] + tuple((n - 1) * s + 1 for n, s in zip(x.shape[2:], strides)))
    spread[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)] = x
    size = tuple(n + k - 1 for n, k in zip(spread.shape[2:], weights.shape[2:]))
    y = np.zeros((x.shape[0], per_group * groups) + size)
    for n in range(x.shape[0]):
        for c in range(channels):
            g = c // (channels // groups)
            for j in range(per_group):
                y[n, g * per_group + j] += slide(spread[n, c], weights[c, j], mode="full")
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.ndim - 2))


def activation(name: Any, keras3: bool) -> Callable[[np.ndarray], np.ndarray]:
    """An RNN activation by the name the source gives (Keras 3's hard_sigmoid is relu6(x + 3) / 6, Keras
    1/2's and ONNX's clip(0.2 x + 0.5, 0, 1))."""
    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "tanh": np.tanh, "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0.0),
        "linear": lambda v: v, "softsign": lambda v: v / (1.0 + np.abs(v)),
        "hard_sigmoid": (lambda v: np.clip(v + 3.0, 0.0, 6.0) / 6.0) if keras3 else
        (lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)),
    }
    if name not in table:
        raise NotImplementedError(f"activation {name!r} is not one this check computes")
    return table[name]


def blocks(array: np.ndarray, order: str, wanted: str) -> np.ndarray:
    """``array`` with its equal blocks along axis 0, in gate ``order``, put in ``wanted`` order."""
    parts = np.split(array, len(order), axis=0)
    return np.concatenate([parts[order.index(gate)] for gate in wanted], axis=0)


def recurrent(layer: Layer, declared: Mapping[str, Declared], x: np.ndarray, keras3: bool) -> np.ndarray:
    """An LSTM or GRU over ``x`` (batch, time, features), every step's output: a ``go_backwards`` layer reads
    the steps last to first and gives its outputs in that order; a bidirectional one concatenates, per
    step, the forward half and the backward half (which reads the steps the other way)."""
    a = layer.attrs
    x = x[:, ::-1] if a.get("go_backwards") else x
    forward = direction(layer, declared, x, keras3, "")
    if not (a.get("bidirectional") or any(name.endswith("_reverse") for name in declared)):
        return forward
    return np.concatenate([forward, direction(layer, declared, x[:, ::-1], keras3, "_reverse")[:, ::-1]], axis=2)


def direction(layer: Layer, declared: Mapping[str, Declared], x: np.ndarray, keras3: bool, suffix: str) -> np.ndarray:
    """One direction of an LSTM or GRU with PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n), the
    source's activations and, for a GRU, its reset_after."""
    a = layer.attrs
    w_ih, w_hh = (matrix(declared[p + suffix]) if p + suffix in declared else None
                  for p in ("weight_ih_l0", "weight_hh_l0"))
    if w_ih is None or w_hh is None:
        raise NotImplementedError(f"the recurrent weights{suffix and ' of the backward direction'} are missing")
    rows, units = w_hh.shape
    b_ih, b_hh = (vector(declared, p + suffix, rows, 0.0) for p in ("bias_ih_l0", "bias_hh_l0"))
    cell, gate = activation(a.get("activation", "tanh"), keras3), activation(a.get("recurrent_activation",
                                                                                  "sigmoid"), keras3)
    h = np.zeros((x.shape[0], units))
    c = np.zeros_like(h)
    steps = []
    for t in range(x.shape[1]):
        xt = x[:, t].astype(np.float64) @ w_ih.T + b_ih
        if layer.kind == "lstm":
            i, f, g, o = np.split(xt + h @ w_hh.T + b_hh, 4, axis=1)
            c = gate(f) * c + gate(i) * cell(g)
            h = gate(o) * cell(c)
        else:
            (r_x, z_x, n_x), (r_w, z_w, n_w), (r_b, z_b, n_b) = (np.split(xt, 3, axis=1), np.split(w_hh, 3),
                                                                 np.split(b_hh, 3))
            r, z = gate(r_x + h @ r_w.T + r_b), gate(z_x + h @ z_w.T + z_b)
            if a.get("reset_after", True):
                n = cell(n_x + r * (h @ n_w.T + n_b))
            else:  # Keras's reset_after=False: the reset gate applies before the recurrent matmul
                n = cell(n_x + (r * h) @ n_w.T + n_b)
            h = (1.0 - z) * n + z * h
        steps.append(h)
    return np.stack(steps, axis=1)


@dataclass(frozen=True)
class Flatten:
    """What a Dense after a Flatten is fed: the map's canonical shape (C, spatial...) and the order the
    runtime flattens it in (``chw``, ``hwc``, ``cw``, ...)."""

    shape: tuple[int, ...]
    order: str

    @property
    def canonical(self) -> str:
        return "c" + SPATIAL[3 - (len(self.shape) - 1):]

    def features(self, x: np.ndarray) -> np.ndarray:
        """``x`` (batch, C*H*W in C, H, W order) in the runtime's order."""
        if math.prod(self.shape) != x.shape[1] or sorted(self.order) != sorted(self.canonical):
            raise NotImplementedError(f"a {self.order} flatten of a {self.shape} map does not feed "
                                      f"{x.shape[1]} inputs")
        perm = [self.canonical.index(letter) + 1 for letter in self.order]
        return np.transpose(x.reshape((x.shape[0],) + self.shape), [0] + perm).reshape(x.shape[0], -1)


def flattens(source: Model, order: Callable[[Layer, tuple[int, ...]], str]) -> dict[str, Flatten]:
    """Per Dense fed by a Flatten of a known map: what it is fed, in the order ``order(flatten, map shape)``."""
    found, memo = {}, {}
    for layer in source.layers:
        if layer.kind == "dense":
            shape = flattened_map_shape(source, layer, memo)
            flatten = feeding_flatten(source, layer, memo)
            if shape and flatten is not None:
                found[layer.name] = Flatten(shape, order(flatten, shape))
    return found


def channels_first(flatten: Layer, shape: tuple[int, ...]) -> str:
    """The flatten order of a channels-first runtime (NumPy's, Theano's): C, then the spatial axes."""
    return "c" + SPATIAL[3 - (len(shape) - 1):]


class DeclaredSide:
    """A target side of :func:`weightport.checks.layer_check.check_layers` computing each layer in NumPy and
    scipy from the declared arrays ``{layer: {param: Declared}}`` (a Lasagne batch norm under ``inv_std``).

    ``flatten``: per Dense fed by a Flatten, what the runtime feeds it.  ``keras3``: the source is Keras 3
    (its hard_sigmoid differs).  Input and output are canonical (channels-first, batch-first)."""

    def __init__(self, declared: Mapping[str, Mapping[str, Declared]], flatten: Mapping[str, Flatten] | None = None,
                 keras3: bool = False, probe: bool = False) -> None:
        self.declared = declared
        self.flatten = dict(flatten or {})
        self.keras3 = keras3
        self.probe = probe  # a variant tried for diagnosis: what it cannot compute simply does not match

    def output(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        declared = self.declared.get(layer.name)
        try:
            if not declared:
                raise NotImplementedError("the converted output holds none of its tensors")
            return self.compute(layer, declared, x)
        except (NotImplementedError, ValueError, IndexError, KeyError, TypeError) as error:
            if self.probe:
                return np.empty(0)
            if isinstance(error, NotImplementedError):
                raise
            if isinstance(error, KeyError):
                raise NotImplementedError(f"the output holds no {error.args[0]!r} tensor for it") from None
            raise NotImplementedError(f"{type(error).__name__}: {error}") from None

    def kept(self, layer: Layer) -> dict[str, np.ndarray]:
        """A kept layer's arrays (an ONNX constant, a custom layer, a module's own parameters) exactly as the
        output holds them, ``{param: array}``, for a by-value check against the source's stored tensors."""
        declared = self.declared.get(layer.name)
        if not declared:
            raise NotImplementedError("the converted output holds none of its tensors")
        return {param: item.array for param, item in declared.items()}

    def compute(self, layer: Layer, declared: Mapping[str, Declared], x: np.ndarray) -> np.ndarray:
        a, kind = layer.attrs, layer.kind
        if kind == "embedding":
            return embedding(declared["weight"])[np.asarray(x)]
        x = np.asarray(x, dtype=np.float64)
        strides = tuple(int(s) for s in a.get("strides") or (1,) * (x.ndim - 2))
        dilations = tuple(int(d) for d in a.get("dilations") or (1,) * (x.ndim - 2))
        rank = x.ndim - 2
        if kind in ("conv", "depthwise"):
            item = declared["weight"]
            weights = kernel(item, rank)
            groups = x.shape[1] if kind == "depthwise" else int(a.get("groups") or 1)
            bias = vector(declared, "bias", weights.shape[0]) if "bias" in declared else None
            return conv(x, weights, bias, item.semantics, strides, dilations, groups)
        if kind == "separable":
            depth, point = declared["depthwise.weight"], declared["pointwise.weight"]
            y = conv(x, kernel(depth, rank), None, depth.semantics, strides, dilations, x.shape[1])
            weights = kernel(point, rank)
            bias = vector(declared, "pointwise.bias", weights.shape[0]) if "pointwise.bias" in declared else None
            return conv(y, weights, bias, point.semantics if point.semantics != "none" else CORRELATION,
                        (1,) * rank, (1,) * rank, 1)
        if kind == "conv_transpose":
            item = declared["weight"]
            weights = kernel(item, rank, transposed=True)
            bias = vector(declared, "bias", weights.shape[1] * int(a.get("groups") or 1)) if "bias" in declared \
                else None
            return conv_transpose(x, weights, bias, item.semantics, strides, dilations, int(a.get("groups") or 1))
        if kind == "dense":
            weights = matrix(declared["weight"])
            if layer.name in self.flatten:
                x = self.flatten[layer.name].features(x)
            if x.shape[-1] != weights.shape[1]:
                raise NotImplementedError(f"it takes {weights.shape[1]} inputs, not {x.shape[-1]}")
            y = x @ weights.T
            return y + vector(declared, "bias", weights.shape[0]) if "bias" in declared else y
        if kind == "batchnorm":
            return batchnorm(x, declared, float(a["epsilon"]) if "epsilon" in a else None)
        if kind == "prelu":
            return np.where(x >= 0, x, slopes(declared["weight"], x.ndim) * x)
        if kind in ("lstm", "gru"):
            return recurrent(layer, declared, x, self.keras3)
        raise NotImplementedError(f"no runtime for {kind} layers here")

    def variants(self, layer: Layer) -> list[tuple[str, DeclaredSide]]:
        """This side with one classic mistake undone each (a flip, H/W swapped, Flatten order, gate order)."""
        declared = self.declared.get(layer.name)
        if not declared:
            return []
        found = []

        def changed(mistake: str, **params: Declared) -> None:
            found.append((mistake, DeclaredSide({**self.declared, layer.name: {**declared, **params}}, self.flatten,
                                                self.keras3, probe=True)))
        param = KERNELS.get(layer.kind, "")
        weight = declared.get(param)
        if weight is not None and weight.semantics in (CORRELATION, CONVOLUTION):
            names, shape = roles(weight.layout), weight.array.shape
            if any(shape[k] > 1 for k, name in enumerate(names) if name in SPATIAL):
                other = CONVOLUTION if weight.semantics == CORRELATION else CORRELATION
                changed("missing or extra 180-degree flip (convolution vs correlation)",
                        **{param: replace(weight, semantics=other)})
            if "h" in names and "w" in names and shape[names.index("h")] == shape[names.index("w")] > 1:
                changed("kernel rows and columns swapped (H/W transposed)",
                        **{param: replace(weight, array=np.swapaxes(weight.array, names.index("h"),
                                                                    names.index("w")))})
        if layer.kind == "dense" and layer.name in self.flatten:
            fed = self.flatten[layer.name]
            other = fed.canonical if fed.order != fed.canonical else fed.canonical[1:] + "c"
            found.append((f"Dense rows not permuted after Flatten ({', '.join(fed.order.upper())} vs "
                          f"{', '.join(other.upper())} order)",
                          DeclaredSide(self.declared, {**self.flatten, layer.name: Flatten(fed.shape, other)},
                                       self.keras3, probe=True)))
        if layer.kind in ("lstm", "gru"):
            orders = [("ifgo", "ifog"), ("ifgo", "igfo"), ("ifgo", "iogf")] if layer.kind == "lstm" else [("rzn", "zrn")]
            for order, wanted in orders:
                swapped = {param: replace(item, array=blocks(np.asarray(item.array), order, wanted))
                           for param, item in declared.items()
                           if item.array.ndim >= 1 and item.array.shape[0] % len(order) == 0}
                changed(f"RNN gates in the wrong order ({order} vs {wanted})", **swapped)
        return found

    def tensors(self, layer: Layer) -> dict[str, np.ndarray]:
        """The kernel with its spatial axes last (``(O, I, ...)``; ``(I, O, ...)`` transposed), for the check's
        symmetric-kernel ambiguity note."""
        param = KERNELS.get(layer.kind, "")
        weight = (self.declared.get(layer.name) or {}).get(param)
        if weight is None:
            return {}
        try:
            return {param: kernel(weight, weight.array.ndim - 2, transposed=layer.kind == "conv_transpose")}
        except (NotImplementedError, ValueError):
            return {}


def embedding(item: Declared) -> np.ndarray:
    """An embedding table as ``(entries, features)``, by its declared ``N``/``E`` axes."""
    return two_axes(item, "n", "e", "an embedding table's (N, E)")


def slopes(item: Declared, ndim: int) -> np.ndarray:
    """PReLU slopes for a ``ndim`` batch: the declared ``C`` axis first, the others (spatial, or 1 where
    shared) kept in their order; one slope per channel stands on axis 1."""
    names = roles(item.layout)
    if "c" not in names or len(names) != item.array.ndim or item.array.ndim > ndim - 1:
        raise NotImplementedError(f"layout {item.layout!r} is not a PReLU slope's (C first or last)")
    first = names.index("c")
    array = np.transpose(np.asarray(item.array, dtype=np.float64),
                         [first] + [k for k in range(len(names)) if k != first])
    return array.reshape((1,) + array.shape + (1,) * (ndim - 1 - array.ndim))


def batchnorm(x: np.ndarray, declared: Mapping[str, Declared], epsilon: float | None) -> np.ndarray:
    """Inference batch norm over axis 1: ``(x - mean) * gamma * inv_std + beta`` with Lasagne's stored
    ``inv_std``, else ``inv_std = 1 / sqrt(running_var + epsilon)``."""
    channels = x.shape[1]
    mean = vector(declared, "running_mean", channels)
    if "inv_std" in declared:
        inv_std = vector(declared, "inv_std", channels)
    elif epsilon is None:
        raise NotImplementedError("the source gives no epsilon")
    else:
        inv_std = 1.0 / np.sqrt(vector(declared, "running_var", channels) + epsilon)
    gamma, beta = vector(declared, "weight", channels, 1.0), vector(declared, "bias", channels, 0.0)
    shape = (1, channels) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) * (gamma * inv_std).reshape(shape) + beta.reshape(shape)


# ------------------------------------------------------------------------------------------ checks


def keras3_source(source: Model) -> bool:
    major = (source.source.version or "").split(".")[0]
    return source.source.format.startswith("keras") and major.isdigit() and int(major) >= 3


def structure_problems(source: Model, found: Mapping[tuple[str, str], Declared], problems: list[str] | None = None,
                       ignored: tuple[str, ...] = ("num_batches_tracked",)) -> list[str]:
    """What keeps ``found`` (``{(layer, param): Declared}``) from holding every tensor of every weighted source
    layer, each with the shape the source's canonical shape takes in its declared layout, and nothing else
    (but ``ignored`` params); ``problems``, what reading the output already found wrong, come first."""
    issues = list(problems or [])
    expected = {(layer.name, param): tensor for layer in source.layers for param, tensor in layer.tensors.items()}
    for (layer, param), tensor in expected.items():
        item = found.get((layer, param))
        if item is None:
            issues.append(f"missing {layer}.{param}")
            continue
        try:
            shape = declared_shape(tensor.layout.pattern, tuple(tensor.shape), item.layout)
        except ValueError as error:
            issues.append(f"{layer}.{param}: {error}")
            continue
        if shape is None:
            issues.append(f"{layer}.{param}: declared layout {item.layout!r} does not order the source's axes "
                          f"({tensor.layout.pattern})")
        elif tuple(item.array.shape) != shape:
            issues.append(f"{layer}.{param} has shape {tuple(item.array.shape)}; the source's "
                          f"{tuple(tensor.shape)} in layout {item.layout} is {shape}")
    issues += [f"unexpected {layer}.{param}" for layer, param in found
               if (layer, param) not in expected and param not in ignored]
    return issues


def by_layer(found: Mapping[tuple[str, str], Declared]) -> dict[str, dict[str, Declared]]:
    layers: dict[str, dict[str, Declared]] = {}
    for (layer, param), item in found.items():
        layers.setdefault(layer, {})[param] = item
    return layers


def layer_rtol(rtol: float, arrays: list[np.ndarray], notes: list[str]) -> float:
    """The relative tolerance for layers computed from ``arrays``: at least :data:`FLOAT16_RTOL` when any is
    float16 (a note says so)."""
    if any(np.asarray(a).dtype.kind == "f" and np.asarray(a).dtype.itemsize == 2 for a in arrays) \
            and rtol < FLOAT16_RTOL:
        notes.append(f"the output holds float16 arrays: layer and whole-model checks allow {FLOAT16_RTOL:.2e} of "
                     "the reference's scale (16 float16 ulps) instead of the rtol given")
        return FLOAT16_RTOL
    return rtol


def read_sidecar(path: str) -> dict[str, Any]:
    """The npz sidecar (``NAME.npz.json``) as data, or raise ValueError saying what is wrong with it."""
    with open(path, "rb") as handle:
        sidecar = parse_json(handle.read(), path, "the npz sidecar")
    if not isinstance(sidecar, dict) or sidecar.get("format") != "weightport npz" \
            or not isinstance(sidecar.get("arrays"), dict):
        raise ValueError("the sidecar is not a weightport npz sidecar (format, arrays)")
    for key, entry in sidecar["arrays"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("layer", "param", "layout",
                                                                                            "semantics")):
            raise ValueError(f"the sidecar's entry for {key!r} lacks layer, param, layout or semantics")
    return sidecar


def read_npz(path: str) -> tuple[dict[tuple[str, str], Declared], list[str]]:
    """Every array of an npz output with the sidecar's layout and semantics, ``{(layer, param): Declared}``,
    and what does not match the sidecar; ValueError (or BadInputError) when the pair cannot be read.

    The archive is untrusted: its members are checked against its size and each ``.npy`` header against its
    member before any array is read (no pickled objects: ``allow_pickle=False``)."""
    sidecar = read_sidecar(path + ".json")
    found: dict[tuple[str, str], Declared] = {}
    problems = []
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive_members(archive.infolist(), file_size(path), path)
            members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            for key, entry in sidecar["arrays"].items():
                if key not in members:
                    problems.append(f"the sidecar lists {key} but the npz holds no such array")
                    continue
                array = npy_member(archive, members[key], path)
                if list(array.shape) != entry.get("shape") or array.dtype.name != entry.get("dtype"):
                    problems.append(f"{key} is {array.dtype.name} {list(array.shape)}, the sidecar says "
                                    f"{entry.get('dtype')} {entry.get('shape')}")
                found[(entry["layer"], entry["param"])] = Declared(array, entry["layout"], entry["semantics"])
            problems += [f"array {key} is not in the sidecar" for key in sorted(set(members) - set(sidecar["arrays"]))]
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"the npz cannot be read ({error})") from None
    return found, problems


def npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> np.ndarray:
    """One ``.npy`` member, read once its header's shape and dtype fit the bytes the member holds."""
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"{info.filename} is .npy version {version}")
        shape, _, dtype = read_header[version](handle)
        what = f"array {info.filename}"
        check_stored_bytes(declared_elements(shape, path, what) * dtype.itemsize, info.file_size, path, what)
    with archive.open(info) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)
