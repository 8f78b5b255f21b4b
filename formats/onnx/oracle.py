"""ONNX as the oracle: the layer's own operator (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul`` + ``Add``,
``BatchNormalization``, ``PRelu``, ``Gather``, ``LSTM``, ``GRU``) on the stored initializers with the node's
attributes, as a one-node graph run by onnxruntime (valid padding, no output padding).

A reverse or bidirectional LSTM/GRU runs with its own ``direction``; its ``Y`` (seq, directions, batch,
hidden) is given in the layer check's convention, the canonical torch module's (formats/torch/module.py):
batch-first, the directions concatenated on the last axis, and a ``reverse`` layer's outputs in the order
it read the steps (ONNX puts each at the position of its input step).  See :mod:`weightport.core.oracle`
for the contract.
"""

from __future__ import annotations

import numpy as np

from weightport.core.oracle import LayerCase


def run_onnx_node(op: str, x: np.ndarray, constants: list[np.ndarray | None], attrs: dict, x_at: int = 0) -> np.ndarray:
    """Run one ONNX operator in onnxruntime (opset 17) on ``constants`` with ``x`` inserted at input position
    ``x_at`` (first by default) and return its first output.  A None constant is an omitted optional input."""
    import onnxruntime
    from onnx import helper, numpy_helper
    names = [f"c{k}" if c is not None else "" for k, c in enumerate(constants)]
    names.insert(x_at, "x")
    while names[-1] == "":
        names.pop()
    initializers = [numpy_helper.from_array(np.ascontiguousarray(c), f"c{k}")
                    for k, c in enumerate(constants) if c is not None]
    node = helper.make_node(op, names, ["y"], **attrs)
    out_type = next((c.dtype for c in constants if c is not None), x.dtype) if x.dtype.kind != "f" else x.dtype
    graph = helper.make_graph([node], "layer",
                              [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))],
                              [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(out_type), None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # an operator without a float64 kernel raises; nothing printed besides
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def source_onnx(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """The layer's own ONNX operator on the stored initializers (onnxruntime), for the canonical input
    ``x``: channels-first for a conv, batch norm or PRelu, (batch, features) for a dense, indices for a
    Gather, batch-first for an RNN."""
    layer, a, stored = case.layer, case.layer.attrs, case.stored
    if layer.kind in ("conv", "depthwise", "conv_transpose"):
        rank = a["rank"]
        folded = a.get("folded_bias")
        y = run_onnx_node("ConvTranspose" if layer.kind == "conv_transpose" else "Conv", x,
                          [stored["weight"], None if folded else stored.get("bias")],
                          {"strides": list(a["strides"]), "dilations": list(a["dilations"]),
                           "group": int(a.get("groups", 1)), "pads": [0] * (2 * rank)})
        return added_bias(y, stored["bias"], folded) if folded else y
    if layer.kind == "dense":
        if layer.source_class == "Gemm":
            gemm = a.get("onnx_gemm", {})
            return run_onnx_node("Gemm", x, [stored["weight"], stored.get("bias")],
                                 {"alpha": gemm.get("alpha", 1.0), "beta": gemm.get("beta", 1.0),
                                  "transB": gemm.get("transB", 0)})
        y = run_onnx_node("MatMul", x, [stored["weight"]], {})
        if "folded_bias" in a:
            return added_bias(y, stored["bias"], a["folded_bias"])
        return y + stored["bias"] if "bias" in stored else y
    if layer.kind == "batchnorm":
        return run_onnx_node("BatchNormalization", x, [stored[p] for p in ("weight", "bias", "running_mean",
                                                                           "running_var")],
                             {"epsilon": float(a["epsilon"])})
    if layer.kind == "prelu":
        return run_onnx_node("PRelu", x, [prelu_slope(case, x)], {})
    if layer.kind == "embedding":
        return run_onnx_node("Gather", x, [stored["weight"]], {"axis": 0}, x_at=1)
    if layer.kind in ("lstm", "gru"):
        return source_rnn(case, x)
    raise NotImplementedError(f"the ONNX check does not run {layer.kind} layers")


def added_bias(y: np.ndarray, bias: np.ndarray, folded: dict) -> np.ndarray:
    """The exporter's separate ``Add`` node (Paddle2ONNX, tf2onnx) on the layer's output: the stored constant
    in the shape the graph added it (``folded_bias["shape"]``), broadcast by onnxruntime."""
    return run_onnx_node("Add", y, [bias.reshape(tuple(folded["shape"]))], {})


def prelu_slope(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """The stored slope as the graph broadcast it: a per-channel ``(C,)`` weight (which torch.onnx
    unsqueezes before the node) as ``(C, 1, ...)``; any other shape as stored."""
    slope = case.stored["weight"]
    if case.stored_layout["weight"] == "c" and x.ndim > 2:
        return slope.reshape(slope.shape + (1,) * (x.ndim - 2))
    return slope


def source_rnn(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """The ONNX LSTM/GRU node with its stored W, R, B and direction on a batch-first ``x``; the output
    batch-first with the directions concatenated, a reverse layer's steps in the order it read them."""
    a, stored, kind = case.layer.attrs, case.stored, case.layer.kind
    if kind == "gru" and not a.get("reset_after", True):
        raise NotImplementedError("linear_before_reset=0 GRU: torch.nn.GRU cannot compute it")
    if x.dtype != np.float32:
        raise NotImplementedError("onnxruntime's LSTM and GRU run float32 only")
    direction = "bidirectional" if a.get("bidirectional") else "reverse" if a.get("go_backwards") else "forward"
    attrs = {"hidden_size": int(a["units"]), "direction": direction}
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    sequence_first = np.swapaxes(x, 0, 1)
    y = run_onnx_node(case.layer.source_class or kind.upper(), sequence_first,
                      [stored["weight_ih_l0"], stored["weight_hh_l0"], stored.get("bias_ih_l0")], attrs)
    if direction == "reverse":
        y = y[::-1]
    return np.swapaxes(np.concatenate(list(np.moveaxis(y, 1, 0)), axis=-1), 0, 1)  # (seq, dirs, n, u) -> (n, seq, dirs*u)


def source_constant(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """A constant of the graph that no layer holds, as the graph sees it: its stored values through
    onnxruntime's Reshape to the shape its consumer reads (the folded Reshape/Unsqueeze chain)."""
    stored = case.stored["value"]
    shape = np.asarray(case.layer.attrs.get("shape", list(stored.shape)), dtype=np.int64)
    if stored.dtype.kind not in "f":
        return stored.reshape(tuple(shape))
    return run_onnx_node("Reshape", stored, [shape], {})
