"""The Caffe layer oracle: OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``, opencv-python-headless < 5)
runs one layer with the blobs exactly as the caffemodel stores them (BatchNorm with its scale factor,
followed by its Scale), so weightport's reading of Caffe is never on both sides of a layer check.

cv2 is imported only when a Caffe layer is checked.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from weightport.core.oracle import LayerCase
from weightport.formats.caffe.encode import weights_only


def import_cv2(importer: str = "readNetFromCaffe", what: str = "Caffe") -> Any:
    """OpenCV with its ``cv2.dnn`` importer ``importer`` (4.x: ``readNetFromCaffe``, ``readNetFromTorch``; gone
    in 5.0), the oracle of ``what`` layers."""
    try:
        import cv2
    except ImportError:
        raise ImportError(f"opencv-python-headless<5 (pip install 'weightport[caffe]') runs {what} layers") from None
    if not hasattr(cv2.dnn, importer):
        raise NotImplementedError(f"OpenCV {cv2.__version__} has no {what} importer (removed in 5.0): install "
                                  "opencv-python-headless<5")
    return cv2


def pairs(values: tuple[int, ...], name: str) -> list[str]:
    return [f"{name}_h: {int(values[0])}", f"{name}_w: {int(values[1])}"]


def conv_text(case: LayerCase) -> tuple[str, str, list[np.ndarray]]:
    a = case.layer.attrs
    if a["rank"] != 2:
        raise NotImplementedError("the OpenCV oracle runs 2-D Caffe convolutions only")
    kind = "Deconvolution" if case.layer.kind == "conv_transpose" else "Convolution"
    lines = [f"num_output: {a['out_channels']}", f"group: {a.get('groups', 1)}",
             f"bias_term: {'true' if 'bias' in case.stored else 'false'}"]
    lines += pairs(a["kernel_size"], "kernel") + pairs(a["strides"], "stride")
    lines += pairs((0, 0), "pad")  # the layer check runs every layer with valid padding (weights, not padding)
    lines += [f"dilation: {int(d)}" for d in a["dilations"]]
    blobs = [case.stored["weight"]] + ([case.stored["bias"]] if "bias" in case.stored else [])
    return kind, "convolution_param { " + " ".join(lines) + " }", blobs


def dense_text(case: LayerCase) -> tuple[str, str, list[np.ndarray]]:
    weight = case.stored["weight"]
    transposed = case.stored_layout["weight"].split()[-2:] == ["i", "o"]
    units = weight.shape[-1] if transposed else weight.shape[-2]
    param = (f"inner_product_param {{ num_output: {units} bias_term: {'true' if 'bias' in case.stored else 'false'}"
             f"{' transpose: true' if transposed else ''} }}")
    return "InnerProduct", param, [weight] + ([case.stored["bias"]] if "bias" in case.stored else [])


def prelu_text(case: LayerCase) -> tuple[str, str, list[np.ndarray]]:
    shared = "true" if case.layer.attrs.get("channel_shared") else "false"
    return "PReLU", f"prelu_param {{ channel_shared: {shared} }}", [case.stored["weight"]]


def net_text(x: np.ndarray, layers: list[tuple[str, str, str]]) -> str:
    lines = ['input: "data"', "input_shape { " + " ".join(f"dim: {n}" for n in x.shape) + " }"]
    bottom = "data"
    for name, kind, param in layers:
        lines.append(f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" {param} }}')
        bottom = name
    return "\n".join(lines) + "\n"


def batchnorm_layers(case: LayerCase) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, list[np.ndarray]]]]:
    """BatchNorm (mean, var, scale factor as stored) then Scale (gamma, beta) as the caffemodel held them; a
    Scale layer alone is a Scale, and so is the learned per-channel scale of SSD's Normalize (its L2
    normalisation is a weightless layer of its own)."""
    a, stored = case.layer.attrs, case.stored
    scale = ("scale", "Scale", "scale_param { bias_term: true }")
    scale_blobs = ("scale", "Scale", [stored["weight"], stored["bias"]])
    if case.layer.source_class in ("Scale", "Normalize"):
        return [scale], [scale_blobs]
    factor = np.asarray([a.get("caffe_scale_factor", 1.0)], np.float32)
    norm = ("norm", "BatchNorm", f"batch_norm_param {{ use_global_stats: true eps: {a['epsilon']!r} }}")
    return [norm, scale], [("norm", "BatchNorm", [stored["running_mean"], stored["running_var"], factor]), scale_blobs]


BUILDERS = {"conv": conv_text, "conv_transpose": conv_text, "dense": dense_text, "prelu": prelu_text}


def opencv_layer(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """The layer's output computed by OpenCV from the stored blobs (float32; ``x`` canonical, channels-first;
    convolutions with valid padding, as the layer check runs every layer)."""
    cv2 = import_cv2()
    if case.layer.kind == "batchnorm":
        layers, blobs = batchnorm_layers(case)
    elif case.layer.kind in BUILDERS:
        kind, param, arrays = BUILDERS[case.layer.kind](case)
        layers, blobs = [("layer", kind, param)], [("layer", kind, arrays)]
    else:
        raise NotImplementedError(f"the OpenCV oracle does not run {case.layer.kind} layers")
    x = np.ascontiguousarray(x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="weightport-caffe-") as folder:
        text, model = os.path.join(folder, "net.prototxt"), os.path.join(folder, "net.caffemodel")
        with open(text, "w") as handle:
            handle.write(net_text(x, layers))
        with open(model, "wb") as handle:
            handle.write(weights_only(blobs))
        net = cv2.dnn.readNetFromCaffe(text, model)
        net.setInput(x)
        return np.asarray(net.forward(), dtype=np.float32)


def run_caffe_source(source: Any, x: np.ndarray, outputs: list[str] | None = None) -> Any:
    """:func:`run_caffe_file` on the caffemodel ``source`` (a weightport Model) was read from, with its details."""
    return run_caffe_file(source.source.path, x, source.source.details, outputs)


def run_caffe_file(path: str, x: np.ndarray, details: dict[str, Any] | None = None,
                   outputs: list[str] | None = None) -> Any:
    """The whole Caffe model run by OpenCV on ``x`` (N, C, H, W as Caffe takes it): the caffemodel ``path``
    with the prototxt weightport read (``details["prototxt"]``); its final output, or with ``outputs`` (layer
    names of the canonical model) the list of those layers' outputs, the Caffe blobs ``details["tops"]`` names."""
    prototxt = (details or {}).get("prototxt")
    if not prototxt:
        raise NotImplementedError("OpenCV needs the network's .prototxt, and none was given as its spec or "
                                  "found beside the model")
    cv2 = import_cv2()
    net = cv2.dnn.readNetFromCaffe(prototxt, path)
    net.setInput(np.ascontiguousarray(x, dtype=np.float32))
    if outputs:
        tops = (details or {}).get("tops") or {}
        return [np.asarray(blob, dtype=np.float32) for blob in net.forward([tops.get(name, name) for name in outputs])]
    return np.asarray(net.forward(), dtype=np.float32)
