"""The Torch7 layer oracle: OpenCV's Torch importer (``cv2.dnn.readNetFromTorch``, opencv-python-headless < 5)
runs one module written with the tensors exactly as the .t7 file stores them (a SpatialConvolutionMM's
flattened weight, an old BatchNorm's ``running_std``), so weightport's reading of Torch7 is never on both
sides of a layer check.  cv2 is imported only when a Torch7 layer is checked."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import numpy as np

from weightport.core.oracle import LayerCase
from weightport.formats.caffe.oracle import import_cv2
from weightport.formats.torch7.encode import Module, dumps


def nn_class(case: LayerCase) -> str:
    name = case.layer.source_class or ""
    return "nn." + name.split(".", 1)[1] if name.startswith(("nn.", "cudnn.")) else name


def conv_module(case: LayerCase) -> Module:
    """The convolution with valid padding and no output padding (the layer check runs every layer so)."""
    a, stored = case.layer.attrs, case.stored
    transpose = case.layer.kind == "conv_transpose"
    fields = {"nInputPlane": a["in_channels"], "nOutputPlane": a["out_channels"], "kH": a["kernel_size"][0],
              "kW": a["kernel_size"][1], "dH": a["strides"][0], "dW": a["strides"][1], "padH": 0, "padW": 0,
              "weight": stored["weight"], "bias": stored.get("bias")}
    if a.get("groups", 1) != 1:
        raise NotImplementedError("the OpenCV oracle runs Torch7 convolutions of one group only")
    if a["dilations"] != (1, 1):
        fields.update(dilationH=a["dilations"][0], dilationW=a["dilations"][1])
        return Module("nn.SpatialDilatedConvolution", fields)
    if transpose:
        fields.update(adjH=0, adjW=0)
    return Module(nn_class(case) if nn_class(case).startswith("nn.Spatial") else "nn.SpatialConvolution", fields)


def batchnorm_module(case: LayerCase) -> Module:
    a, stored = case.layer.attrs, case.stored
    statistics = a.get("torch7_statistics", "running_var")
    return Module("nn.SpatialBatchNormalization", {
        "weight": stored["weight"], "bias": stored["bias"], "running_mean": stored["running_mean"],
        statistics: stored["running_var"], "eps": a["epsilon"], "momentum": 0.1, "affine": True, "train": False})


def linear_module(case: LayerCase) -> Module:
    return Module("nn.Linear", {"weight": case.stored["weight"], "bias": case.stored.get("bias")})


def prelu_module(case: LayerCase) -> Module:
    weight = case.stored["weight"]
    return Module("nn.PReLU", {"nOutputPlane": weight.shape[0] if weight.shape[0] > 1 else 0, "weight": weight})


BUILDERS = {"conv": conv_module, "conv_transpose": conv_module, "batchnorm": batchnorm_module,
            "dense": linear_module, "prelu": prelu_module}


def opencv_module(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """The layer's output computed by OpenCV from the stored tensors (float32, ``x`` canonical)."""
    cv2 = import_cv2("readNetFromTorch", "Torch7")
    if case.layer.kind not in BUILDERS:
        raise NotImplementedError(f"the OpenCV oracle does not run {case.layer.kind} layers")
    module = BUILDERS[case.layer.kind](case)
    module.fields = {key: value for key, value in module.fields.items() if value is not None}
    flat_norm = case.layer.kind == "batchnorm" and x.ndim == 2
    data = np.ascontiguousarray(x.reshape(x.shape + (1, 1)) if flat_norm else x, dtype=np.float32)
    root = Module("nn.Sequential", {"modules": {1.0: module}, "train": False})
    with tempfile.TemporaryDirectory(prefix="weightport-torch7-") as folder:
        path = os.path.join(folder, "layer.t7")
        with open(path, "wb") as handle:
            handle.write(dumps(root))
        net = cv2.dnn.readNetFromTorch(path)
        net.setInput(data)
        out = np.asarray(net.forward(), dtype=np.float32)
    return out.reshape(x.shape) if flat_norm else out


def run_torch7_source(source: Any, x: np.ndarray) -> np.ndarray:
    """:func:`run_torch7_file` on the .t7 file ``source`` (a weightport Model) was read from, with its details."""
    return run_torch7_file(source.source.path, x, source.source.details)


def run_torch7_file(path: str, x: np.ndarray, details: dict[str, Any] | None = None) -> np.ndarray:
    """The whole .t7 model run by OpenCV on ``x`` (N, C, H, W); its final output.  OpenCV reads only its own
    machine's byte order: another is refused (NotImplementedError)."""
    order = (details or {}).get("byte_order")
    if order is not None and order != sys.byteorder:
        raise NotImplementedError(f"OpenCV reads .t7 files of this machine's byte order ({sys.byteorder}) only, "
                                  f"and this one is {order}-endian")
    cv2 = import_cv2("readNetFromTorch", "Torch7")
    net = cv2.dnn.readNetFromTorch(path)
    net.setInput(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(net.forward(), dtype=np.float32)
