"""NumPy/scipy as the oracle, for what Theano computed and for layers that are plain formulas.

* Convolutions of kernels stored with *convolution* semantics (Theano, Lasagne's ``Conv2DLayer``, Keras on
  Theano), and every convolution of a Theano/Lasagne pickle: ``scipy.signal.convolve`` (true
  convolution, Theano's ``conv2d`` with its default ``filter_flip=True``) or ``scipy.signal.correlate``
  (``filter_flip=False``: Lasagne's ``Conv2DDNNLayer``, cuda-convnet) of each input/output channel pair,
  valid, the output subsampled for strides, the kernel dilated (zeros between its taps) for dilations,
  one group at a time; depthwise kernels (``... i m``) give output channel ``i * m + k`` (TensorFlow's and
  Keras's definition); separable layers are the depthwise conv, then the pointwise (1x1) one.
* Transposed convolutions as Theano defined them (``AbstractConv2d_gradInputs``, which Keras 1's
  ``Deconvolution2D`` and Keras 2's ``Conv2DTranspose`` call on Theano with ``filter_flip=True``): a
  *full* ``scipy.signal.correlate`` of the stride-dilated input (``s - 1`` zeros between its samples)
  with the stored kernel, summed over the input channels (``scipy.signal.convolve`` for a correlation
  kernel).  Valid, no output padding: the output has ``(n - 1) * s + (k - 1) * d + 1`` samples per axis,
  what ``torch.nn.functional.conv_transpose`` gives with ``padding=0, output_padding=0``.
* Dense layers: ``x @ kernel`` with the stored ``(in, out)`` kernel, after a Flatten the features first
  put in the source's flatten order; Lasagne's ``BatchNormLayer``:
  ``(x - mean) * (gamma * inv_std) + beta`` with the stored ``inv_std``.

Kernels are read by the axis names of their stored pattern (``case.stored_layout``: ``o i h w`` for
Theano, ``h w i o`` for Keras, ``w 1 i o`` for a Keras 1 ``Convolution1D``) with ``np.transpose`` and
indexing only, never through weightport's layout code.  Everything is computed in the dtype of the input
and the stored arrays (float32, or float64 for the reference run).  See :mod:`weightport.core.oracle` for
the contract.
"""

from __future__ import annotations

import re

import numpy as np

from weightport.core.oracle import LayerCase

SPATIAL = ("d", "h", "w")
CONVOLUTION, CORRELATION = "convolution", "correlation"


# -- kernels by their stored axis names ----------------------------------------------------------------
def named_axes(array: np.ndarray, pattern: str, sizes: dict[str, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """``array`` with every merged group of ``pattern`` (``(i m)``) split, and the name of each axis.
    ``sizes`` gives the size of all but one axis of a group."""
    tokens = re.findall(r"\([^)]*\)|\S+", pattern)
    if len(tokens) != array.ndim:
        raise NotImplementedError(f"stored layout {pattern!r} does not fit an array of shape {array.shape}")
    shape: list[int] = []
    names: list[str] = []
    for token, size in zip(tokens, array.shape):
        parts = token.strip("()").split()
        unknown = [p for p in parts if p not in (sizes or {})]
        if len(parts) > 1 and len(unknown) != 1:
            raise NotImplementedError(f"stored layout {pattern!r}: the sizes in {token} are not known")
        if len(parts) == 1:
            shape.append(size)
        else:
            rest = int(np.prod([sizes[p] for p in parts if p in sizes], dtype=np.int64))
            shape += [size // rest if p in unknown else int(sizes[p]) for p in parts]
        names += parts
    return array.reshape(shape), names


def arrange(array: np.ndarray, pattern: str, front: tuple[str, ...], sizes: dict[str, int] | None = None) -> np.ndarray:
    """The stored ``array`` with the axes named ``front`` first, then its spatial axes in d, h, w order; unit
    axes (``1``) are indexed away.  Only ``np.transpose`` and indexing by the stored names."""
    array, names = named_axes(array, pattern, sizes)
    if any(name == "1" and size != 1 for name, size in zip(names, array.shape)):
        raise NotImplementedError(f"stored layout {pattern!r} names a unit axis that is not of size 1")
    array = array[tuple(0 if name == "1" else slice(None) for name in names)]
    names = [name for name in names if name != "1"]
    order = list(front) + [name for name in SPATIAL if name in names]
    if sorted(order) != sorted(names):
        raise NotImplementedError(f"stored layout {pattern!r} does not name the axes {' '.join(front)} and spatial "
                                  "axes only")
    return np.transpose(array, [names.index(name) for name in order])


def depth_multiplier(case: LayerCase) -> dict[str, int]:
    multiplier = case.layer.attrs.get("depth_multiplier")
    return {"m": int(multiplier)} if multiplier else {}


def dilate(array: np.ndarray, dilations: tuple[int, ...], first: int) -> np.ndarray:
    """``array`` with ``d - 1`` zeros between its samples on each axis from ``first`` on (a dilated kernel,
    or a stride-dilated input)."""
    if all(d == 1 for d in dilations):
        return array
    shape = array.shape[:first] + tuple((n - 1) * d + 1 for n, d in zip(array.shape[first:], dilations))
    out = np.zeros(shape, array.dtype)
    out[(slice(None),) * first + tuple(slice(None, None, d) for d in dilations)] = array
    return out


def semantics_op(semantics: str, full: bool = False):
    """The scipy op of a kernel's semantics: a forward conv slides it (convolve for a convolution kernel); a
    transposed conv scatters it, which is the other op in ``full`` mode."""
    import scipy.signal
    if semantics not in (CONVOLUTION, CORRELATION):
        raise NotImplementedError(f"the kernel's semantics are not known ({semantics})")
    convolves = (semantics == CONVOLUTION) != full
    return scipy.signal.convolve if convolves else scipy.signal.correlate


def slide(x: np.ndarray, kernel: np.ndarray, groups: int, strides: tuple[int, ...], dilations: tuple[int, ...],
          semantics: str) -> np.ndarray:
    """A forward conv of channels-first ``x`` with ``kernel`` (out, in/groups, spatial...), valid."""
    op = semantics_op(semantics)
    kernel = dilate(kernel, dilations, 2)
    out_channels, per_in = kernel.shape[:2]
    per_out = out_channels // groups

    def channel(n: int, o: int) -> np.ndarray:
        first = (o // per_out) * per_in  # the group's first input channel
        return sum(op(x[n, first + i], kernel[o, i], mode="valid", method="direct") for i in range(per_in))
    y = np.stack([np.stack([channel(n, o) for o in range(out_channels)]) for n in range(x.shape[0])])
    return y[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]


def scatter(x: np.ndarray, kernel: np.ndarray, groups: int, strides: tuple[int, ...], dilations: tuple[int, ...],
            semantics: str) -> np.ndarray:
    """A transposed conv of channels-first ``x`` with ``kernel`` (in, out/groups, spatial...): each input
    channel's stride-dilated map spread through the kernel (a full convolution), valid, no output padding."""
    op = semantics_op(semantics, full=True)
    spread = dilate(x, strides, 2)
    kernel = dilate(kernel, dilations, 2)
    in_channels, per_out = kernel.shape[:2]
    per_in = in_channels // groups

    def channel(n: int, o: int) -> np.ndarray:
        first = (o // per_out) * per_in  # the group's first input channel
        return sum(op(spread[n, first + i], kernel[first + i, o % per_out], mode="full", method="direct")
                   for i in range(per_in))
    return np.stack([np.stack([channel(n, o) for o in range(per_out * groups)]) for n in range(x.shape[0])])


def with_bias(y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.ndim - 2))


def kernel_semantics(case: LayerCase, param: str) -> str:
    return case.layer.tensors[param].provenance.source_semantics


def scipy_conv(case: LayerCase, x_first: np.ndarray) -> np.ndarray:
    """A conv, depthwise, separable or transposed conv layer as Theano computes it (see the module
    docstring), on the channels-first input, valid padding."""
    a, kind, stored, layouts = case.layer.attrs, case.layer.kind, case.stored, case.stored_layout
    dtype = np.result_type(x_first, *[v for v in stored.values() if v.dtype.kind == "f"])
    x = x_first.astype(dtype)
    cast = {k: v.astype(dtype) for k, v in stored.items()}
    strides, dilations = tuple(a["strides"]), tuple(a["dilations"])
    if kind == "conv":
        kernel = arrange(cast["weight"], layouts["weight"], ("o", "i"))
        y = slide(x, kernel, int(a.get("groups", 1)), strides, dilations, kernel_semantics(case, "weight"))
        return with_bias(y, cast.get("bias"))
    if kind == "conv_transpose":
        kernel = arrange(cast["weight"], layouts["weight"], ("i", "o"))
        y = scatter(x, kernel, int(a.get("groups", 1)), strides, dilations, kernel_semantics(case, "weight"))
        return with_bias(y, cast.get("bias"))
    if kind == "depthwise":
        y = depthwise(x, cast["weight"], layouts["weight"], case, strides, dilations, kernel_semantics(case, "weight"))
        return with_bias(y, cast.get("bias"))
    if kind == "separable":
        y = depthwise(x, cast["depthwise.weight"], layouts["depthwise.weight"], case, strides, dilations,
                      kernel_semantics(case, "depthwise.weight"))
        pointwise = arrange(cast["pointwise.weight"], layouts["pointwise.weight"], ("o", "i"))
        return with_bias(np.einsum("oi,ni...->no...", pointwise, y), cast.get("pointwise.bias"))
    raise NotImplementedError(f"the scipy check does not run {kind} layers")


def depthwise(x: np.ndarray, kernel: np.ndarray, pattern: str, case: LayerCase, strides: tuple[int, ...],
              dilations: tuple[int, ...], semantics: str) -> np.ndarray:
    """Each input channel ``i`` slid with its ``m`` kernels, output channel ``i * m + k``."""
    per_channel = arrange(kernel, pattern, ("i", "m"), depth_multiplier(case))
    channels, multiplier = per_channel.shape[:2]
    stacked = per_channel.reshape((channels * multiplier, 1) + per_channel.shape[2:])  # i-major: i * m + k
    return slide(x, stacked, channels, strides, dilations, semantics)


def source_dense(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """``x @ kernel`` with the stored (in, out) kernel; after a Flatten, ``x``'s features (canonical: C, then
    the spatial axes) are first put in the source's flatten order (e.g. H, W, C), as the source model would
    have flattened them."""
    kernel = case.stored["weight"]
    pattern = case.stored_layout["weight"]
    dtype = np.result_type(x, kernel)
    if pattern not in ("i o", "o i"):
        features, out = pattern.rsplit(" ", 1)
        if out != "o" or not features.startswith("("):
            raise NotImplementedError(f"dense check cannot read stored layout {pattern}")
        order = features.strip("()").split()
        known = dict(getattr(case.layer.tensors["weight"].transforms[0], "known", ()))
        canonical = ["c"] + [name for name in SPATIAL if name in order]
        if sorted(order) != sorted(canonical) or any(name not in known for name in canonical[1:]):
            raise NotImplementedError(f"dense check cannot read stored layout {pattern}")
        sizes = [int(known[name]) for name in canonical[1:]]
        channels = x.shape[1] // int(np.prod(sizes, dtype=np.int64))
        as_map = x.reshape((x.shape[0], channels, *sizes))
        x = np.transpose(as_map, [0] + [1 + canonical.index(name) for name in order]).reshape(x.shape[0], -1)
    matrix = kernel if pattern != "o i" else kernel.T
    y = x.astype(dtype) @ matrix.astype(dtype)
    if "bias" in case.stored:
        y = y + case.stored["bias"].astype(dtype)
    return y


def stores_inv_std(case: LayerCase) -> bool:
    """True when the array read as ``running_var`` is Lasagne's ``inv_std`` (the reader's provenance says so)."""
    provenance = case.layer.tensors["running_var"].provenance
    return "inv_std" in (provenance.rule or "") or provenance.source_key.rsplit(".", 1)[-1] == "inv_std"


def lasagne_batchnorm(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Lasagne's ``BatchNormLayer`` at inference, ``(x - mean) * (gamma * inv_std) + beta`` over axis 1, with
    the stored ``inv_std`` (or ``1 / sqrt(var + epsilon)`` when the file stores a variance)."""
    stored = case.stored
    dtype = np.result_type(x, *stored.values())
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def vector(param: str) -> np.ndarray:
        return stored[param].astype(dtype).reshape(shape)
    if stores_inv_std(case):
        inv_std = vector("running_var")
    else:
        inv_std = 1 / np.sqrt(vector("running_var") + dtype.type(case.layer.attrs["epsilon"]))
    return (x.astype(dtype) - vector("running_mean")) * (vector("weight") * inv_std) + vector("bias")


def source_constant(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """A kept constant's value as stored, in the shape its consumer reads (its output whatever the input)."""
    stored = case.stored["value"]
    return stored.reshape(tuple(case.layer.attrs.get("shape", stored.shape)))
