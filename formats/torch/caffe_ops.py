"""Weightless layers of Caffe and Torch7 models run by the canonical torch module, with their sources'
own semantics (BVLC Caffe's layers, Torch7's nn; OpenCV's cv2.dnn importers are the tests' oracle).
:func:`register` adds them to the module's tables (``RUNS`` and ``OUTPUT_KINDS`` of
:mod:`weightport.formats.torch.module`, which calls it once; this module never imports module.py).

Every tensor is channels-first and batch-first, as Caffe and Torch7 hold them; an ``axis`` attribute counts
the batch axis as 0 (Caffe's convention):

* ``lrn``: Caffe ``LRN``.  ACROSS_CHANNELS: ``x / (k + alpha/size * sum of x^2 over size channels)^beta``
  (the window centred, zero outside); WITHIN_CHANNEL: ``x / (1 + alpha/size^2 * sum of x^2 over a size x
  size window)^beta`` (zero padding ``(size-1)/2``).  Caffe divides alpha by the window's size.
* ``power``: Caffe ``Power``, ``(shift + scale * x) ^ power``.
* ``reshape_dims``: Caffe ``Reshape``: ``dims`` replace the input axes ``axis`` .. ``axis + num_axes``
  (``num_axes`` -1: to the end); a 0 copies the input's axis, one -1 takes what remains.
* ``slice``: one output of Caffe ``Slice``: part ``index`` of the input cut along ``axis`` at ``points``
  (without points: ``parts`` equal parts).
* ``normalize``: ``x / (sum(|x|^p) + eps)^(1/p)`` over ``axis`` (Torch7 ``nn.Normalize``, SSD's
  ``Normalize`` with ``across_spatial`` over every axis but the batch); SSD's learned scale is a
  separate per-channel scale layer.
* ``softmax``: softmax (``log``: log-softmax) over ``axis``: Caffe ``Softmax`` on another axis than the
  channels, Torch7 ``nn.LogSoftMax``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from weightport.core.errors import UnsupportedError
from weightport.core.model import Layer
from weightport.core.shapes import caffe_reshape, slice_bounds


def lrn(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    a, x = layer.attrs, inputs[0]
    size, alpha, beta = int(a["size"]), float(a["alpha"]), float(a["beta"])
    if a.get("region") == "WITHIN_CHANNEL":
        if size % 2 == 0:
            raise UnsupportedError(f"layer {layer.name!r}: LRN WITHIN_CHANNEL with an even local_size {size}")
        summed = F.avg_pool2d(x * x, size, 1, (size - 1) // 2, count_include_pad=True)  # the mean: sum / size^2
        return x / (1.0 + alpha * summed) ** beta
    return F.local_response_norm(x, size, alpha, beta, float(a.get("k", 1.0)))  # alpha/size * sum, torch's too


def power(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    a = layer.attrs
    return (float(a.get("shift", 0.0)) + float(a.get("scale", 1.0)) * inputs[0]) ** float(a.get("power", 1.0))


def reshape_dims(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    x = inputs[0]
    a = layer.attrs
    try:
        shape = caffe_reshape(tuple(x.shape), a["dims"], int(a.get("axis", 0)), int(a.get("num_axes", -1)))
    except ValueError as error:
        raise UnsupportedError(f"layer {layer.name!r}: {error}") from None
    return x.reshape(shape)


def slice_part(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    x = inputs[0]
    a = layer.attrs
    axis = int(a["axis"]) % x.dim()
    try:
        start, end = slice_bounds(int(x.shape[axis]), a.get("points") or [], int(a["index"]), int(a["parts"]))
    except (ValueError, IndexError) as error:
        raise UnsupportedError(f"layer {layer.name!r}: Slice cannot cut an axis of {x.shape[axis]} ({error})") from None
    return x.narrow(axis, start, end - start)


def normalize(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    x = inputs[0]
    p, eps = float(layer.attrs["p"]), float(layer.attrs.get("eps", 0.0))
    dims = list(range(1, x.dim())) if layer.attrs.get("across_spatial") else [int(layer.attrs.get("axis", 1))]
    total = x.abs().pow(p).sum(dim=dims, keepdim=True) + eps
    return x / total.pow(1.0 / p)


def softmax(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    axis = int(layer.attrs.get("axis", 1))
    return (F.log_softmax if layer.attrs.get("log") else F.softmax)(inputs[0], dim=axis)


RUNS = {"lrn": lrn, "power": power, "reshape_dims": reshape_dims, "slice": slice_part, "normalize": normalize,
        "softmax": softmax}


def reshaped_kind(layer: Layer, feeding: str) -> str:
    """A Caffe Reshape's output: a (channels, ...) map when it keeps more than one axis, else flat."""
    shape = layer.output_shape
    return "map" if shape is not None and len(shape) >= 2 else "flat"


def register(canonical: Any) -> None:
    """Register these layers' runs and output kinds in the canonical module ``canonical`` (module.py)."""
    for kind, run in RUNS.items():
        canonical.runs(kind)(run)
    canonical.output_kind("lrn", "power", "slice", "normalize", "softmax")(lambda layer, feeding: feeding)
    canonical.output_kind("reshape_dims")(reshaped_kind)

