"""Layer-level validation: each weighted layer run in the source framework with the *stored* source
arrays and in PyTorch with the *converted* tensors, on seeded random asymmetric inputs.

Source side, by what the source computes:

* Keras kernels with correlation semantics: TensorFlow ops (``tf.nn.convolution``,
  ``tf.nn.depthwise_conv2d``, ``tf.nn.conv_transpose``) and Keras RNN layers, fed the arrays
  exactly as the file stores them (Keras's own HWIO layout).
* Convolution semantics (Theano-backend Keras, Theano/Lasagne): ``scipy.signal.convolve``
  (true convolution) over each input/output channel pair, indexing the stored array by its
  stored axis order.

* ONNX sources: the layer's own ONNX operator (``Conv``, ``Gemm``, ``MatMul`` + ``Add``, ``LSTM``,
  ``GRU``) with the stored initializers and the node's attributes, as a one-node graph run by
  onnxruntime.

Target side: standard ``torch.nn`` layers holding the converted tensors.  Our layout code is
never on both sides of a comparison.  When a layer fails, candidate mistakes (a flip, a swap of
two spatial axes, a gate reorder) are tried on the converted tensor and the one that makes it
pass is named as the likely cause.  A kernel equal to its own 180-degree rotation cannot reveal
a missing flip; that is reported as an ambiguity, not a pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from weightport.core.layout import CONVOLUTION, flip_axes, Layout, relayout, reorder_blocks
from weightport.core.model import Layer, Model
from weightport.checks.validate import Check, compare

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RUNNABLE = ("conv", "depthwise", "dense", "lstm", "gru")


@dataclass
class LayerCase:
    """One layer to check: its source tensors (as stored) and converted tensors (canonical layout)."""

    layer: Layer
    stored: dict[str, np.ndarray]
    stored_layout: dict[str, str]
    semantics: str
    converted: dict[str, np.ndarray]
    source_format: str = ""


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


# -- source side -----------------------------------------------------------------------------------
def source_conv(case: LayerCase, x_first: np.ndarray) -> np.ndarray:
    """The source's conv/depthwise output for a channels-first input (valid padding)."""
    layer, a = case.layer, case.layer.attrs
    kernel = case.stored["weight"]
    pattern = case.stored_layout["weight"].split()
    rank = a["rank"]
    if case.semantics == CONVOLUTION:
        return scipy_conv(case, x_first)
    import tensorflow as tf
    x_last = np.moveaxis(x_first, 1, -1)
    if pattern[-2:] not in (["i", "o"], ["i", "m"]):
        raise NotImplementedError(f"stored layout {' '.join(pattern)} is not a TensorFlow kernel layout")
    if layer.kind == "depthwise":
        if rank != 2:
            raise NotImplementedError("depthwise check runs for 2-D kernels")
        y = tf.nn.depthwise_conv2d(x_last, kernel, [1, *a["strides"], 1], "VALID", dilations=a["dilations"]).numpy()
    else:
        groups = a.get("groups", 1)  # TensorFlow's CPU kernels run grouped convs one group at a time
        cin, cout = x_last.shape[-1] // groups, kernel.shape[-1] // groups
        y = np.concatenate([
            tf.nn.convolution(x_last[..., g * cin:(g + 1) * cin], kernel[..., g * cout:(g + 1) * cout],
                              strides=a["strides"], padding="VALID", dilations=a["dilations"]).numpy()
            for g in range(groups)], axis=-1)
    if "bias" in case.stored:
        y = y + case.stored["bias"]
    return np.moveaxis(y, -1, 1)


def scipy_conv(case: LayerCase, x_first: np.ndarray) -> np.ndarray:
    """True convolution with the stored kernel (scipy.signal.convolve), stride 1, no dilation."""
    import scipy.signal
    a = case.layer.attrs
    if any(s != 1 for s in a["strides"]) or any(d != 1 for d in a["dilations"]) or a.get("groups", 1) != 1:
        raise NotImplementedError("the scipy check runs stride 1, undilated, ungrouped convolutions")
    kernel = case.stored["weight"]
    axes = case.stored_layout["weight"].split()
    o_axis, i_axis = axes.index("o"), axes.index("i")
    out_channels, in_channels = kernel.shape[o_axis], kernel.shape[i_axis]
    outputs = []
    for n in range(x_first.shape[0]):
        per_out = []
        for o in range(out_channels):
            total = 0.0
            for i in range(in_channels):
                index = [slice(None)] * kernel.ndim
                index[o_axis], index[i_axis] = o, i
                spatial = kernel[tuple(index)]  # remaining axes are spatial, in stored order
                total = total + scipy.signal.convolve(x_first[n, i].astype(np.float64), spatial.astype(np.float64),
                                                      mode="valid")
            per_out.append(total + (case.stored["bias"][o] if "bias" in case.stored else 0.0))
        outputs.append(np.stack(per_out))
    return np.stack(outputs).astype(np.float32)


def source_dense(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """``x @ kernel`` with the stored (in, out) kernel; after a Flatten, ``x``'s features are first put in
    the source's flatten order (e.g. H, W, C), as the source model would have flattened them."""
    kernel = case.stored["weight"]
    pattern = case.stored_layout["weight"]
    if pattern != "i o":
        features, out = pattern.rsplit(" ", 1)
        if out != "o" or not features.startswith("("):
            raise NotImplementedError(f"dense check cannot read stored layout {pattern}")
        known = dict(getattr(case.layer.tensors["weight"].transforms[0], "known", ()))
        canonical = "(" + " ".join(["c"] + [a for a in ("d", "h", "w") if a in known]) + ")"
        x = relayout(x, Layout(f"n {canonical}"), Layout(f"n {features}"), known)
    y = x.astype(np.float64) @ kernel.astype(np.float64)
    if "bias" in case.stored:
        y = y + case.stored["bias"]
    return y.astype(np.float32)


def source_rnn(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's own LSTM/GRU with the stored arrays (kernel, recurrent_kernel, bias)."""
    import keras
    a = case.layer.attrs
    if a.get("bidirectional"):
        raise NotImplementedError("bidirectional RNNs are checked by the whole-model check")
    if case.stored_layout["weight_ih_l0"] != "i o":
        raise NotImplementedError("RNN check runs on Keras (in, gates*units) kernels")
    if case.layer.kind == "lstm":
        rnn = keras.layers.LSTM(a["units"], return_sequences=True)
    else:
        rnn = keras.layers.GRU(a["units"], return_sequences=True, reset_after=a.get("reset_after", True))
    rnn.build(x.shape)
    # the stored bias: (G*u,), or (2, G*u) for a reset_after GRU, as Keras keeps it
    rnn.set_weights([case.stored["weight_ih_l0"], case.stored["weight_hh_l0"], case.stored["bias_ih_l0"]])
    return np.asarray(rnn(x))


def run_onnx_node(op: str, x: np.ndarray, constants: list[np.ndarray | None], attrs: dict) -> np.ndarray:
    """Run one ONNX operator ``op(x, *constants)`` in onnxruntime (opset 17) and return its first output.
    A None constant is an omitted optional input."""
    import onnxruntime
    from onnx import helper, numpy_helper
    names = ["x"] + [f"c{k}" if c is not None else "" for k, c in enumerate(constants)]
    while names[-1] == "":
        names.pop()
    initializers = [numpy_helper.from_array(np.ascontiguousarray(c), f"c{k}")
                    for k, c in enumerate(constants) if c is not None]
    node = helper.make_node(op, names, ["y"], **attrs)
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def source_onnx(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """The layer's own ONNX operator on the stored initializers (onnxruntime), for the canonical input
    ``x``: channels-first for a conv, (batch, features) for a dense, batch-first for an RNN."""
    layer, a, stored = case.layer, case.layer.attrs, case.stored
    if layer.kind in ("conv", "depthwise"):
        rank = a["rank"]
        return run_onnx_node("Conv", x, [stored["weight"], stored.get("bias")],
                             {"strides": list(a["strides"]), "dilations": list(a["dilations"]),
                              "group": int(a.get("groups", 1)), "pads": [0] * (2 * rank)})
    if layer.kind == "dense":
        if layer.source_class == "Gemm":
            gemm = a.get("onnx_gemm", {})
            return run_onnx_node("Gemm", x, [stored["weight"], stored.get("bias")],
                                 {"alpha": gemm.get("alpha", 1.0), "beta": gemm.get("beta", 1.0),
                                  "transB": gemm.get("transB", 0)})
        y = run_onnx_node("MatMul", x, [stored["weight"]], {})
        return y + stored["bias"] if "bias" in stored else y
    if a.get("bidirectional") or a.get("go_backwards"):
        raise NotImplementedError("bidirectional and reverse RNNs are checked by the whole-model check")
    if layer.kind == "gru" and not a.get("reset_after", True):
        raise NotImplementedError("linear_before_reset=0 GRU: torch.nn.GRU cannot compute it")
    attrs = {"hidden_size": int(a["units"])}
    if layer.kind == "gru":
        attrs["linear_before_reset"] = 1
    sequence_first = relayout(x, Layout("n t f"), Layout("t n f"))
    y = run_onnx_node(layer.source_class or layer.kind.upper(), sequence_first,
                      [stored["weight_ih_l0"], stored["weight_hh_l0"], stored.get("bias_ih_l0")], attrs)
    return relayout(y[:, 0], Layout("t n u"), Layout("n t u"))  # Y: (seq, directions, batch, hidden)


# -- target side ------------------------------------------------------------------------------------
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


def run_source(case: LayerCase, x: np.ndarray) -> np.ndarray:
    if case.source_format == "onnx":
        return source_onnx(case, x)
    if case.layer.kind in ("conv", "depthwise"):
        return source_conv(case, x)
    if case.layer.kind == "dense":
        return source_dense(case, x)
    return source_rnn(case, x)


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


def check_layer(layer: Layer, converted: dict[str, np.ndarray], atol: float, rtol: float, seed: int = 0,
                semantics: str | None = None, source_format: str = "") -> Check:
    """Run one layer on both sides and compare; name the likely cause of a failure."""
    stored, patterns = stored_arrays(layer)
    kernel = layer.tensors.get("weight")
    source_semantics = semantics or (kernel.provenance.source_semantics if kernel is not None else "none")
    case = LayerCase(layer, stored, patterns, source_semantics, converted, source_format)
    rng = np.random.default_rng(seed)
    x = layer_input(layer, rng, stored)
    name = f"layer {layer.name} ({layer.source_class or layer.kind})"
    try:
        expected = run_source(case, x)
    except NotImplementedError as reason:
        return Check(name, True, detail=f"skipped: {reason}")
    except ImportError:
        raise
    except Exception as error:  # the source framework refused the layer: report, do not crash
        return Check(name, True, detail=f"skipped: source framework could not run it ({type(error).__name__})")
    got = torch_output(layer, converted, x)
    check = compare(name, got, expected, atol, rtol)
    note = ambiguity(layer, converted)
    if check.passed and note:
        check.detail = f"ambiguous: {note}"
    if not check.passed:
        for mistake, tensors in candidate_mistakes(layer, converted):
            if compare(name, torch_output(layer, tensors, x), expected, atol, rtol).passed:
                check.detail = f"likely cause: {mistake}"
                break
    return check


def check_layers(source: Model, converted: dict[str, dict[str, np.ndarray]], atol: float, rtol: float) -> list[Check]:
    """A :class:`Check` per runnable weighted layer of ``source`` against its converted tensors."""
    checks = []
    for seed, layer in enumerate(source.layers):
        if layer.kind not in RUNNABLE or not layer.tensors or layer.name not in converted:
            continue
        if layer.attrs.get("time_distributed"):
            continue
        checks.append(check_layer(layer, converted[layer.name], atol, rtol, seed,
                                  source_format=source.source.format))
    return checks
