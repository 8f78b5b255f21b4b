"""ONNX as the oracle: the layer's own operator (``Conv``, ``Gemm``, ``MatMul`` + ``Add``, ``LSTM``,
``GRU``) on the stored initializers with the node's attributes, as a one-node graph run by
onnxruntime.  See :mod:`weightport.core.oracle` for the contract.
"""

from __future__ import annotations

import numpy as np

from weightport.core.layout import Layout, relayout
from weightport.core.oracle import LayerCase


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
