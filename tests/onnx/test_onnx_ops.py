"""The weightless ONNX ops the canonical torch module runs (formats/torch/onnx_ops.py), each against
onnxruntime on a one-node graph with seeded, asymmetric data and the attributes real exporters use."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.requires("onnx", "onnxruntime", "torch")

I64 = np.int64
F32 = np.float32
# (id, op, attributes, constant inputs after x as (name, array) or None, input shape, opset)
CASES = [
    ("slice_negative_step", "Slice", {}, [np.array([-1], I64), np.array([-100], I64), np.array([3], I64),
                                         np.array([-2], I64)], (1, 2, 3, 7), 13),
    ("slice_two_axes", "Slice", {}, [np.array([1, 0], I64), np.array([9, -1], I64), np.array([2, 3], I64)],
     (1, 2, 5, 6), 13),
    ("resize_nearest_asymmetric_floor", "Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                                   "nearest_mode": "floor"},
     [np.zeros(0, F32), np.array([1, 1, 2, 3], F32)], (1, 2, 3, 4), 13),
    ("resize_nearest_half_pixel", "Resize", {"mode": "nearest"}, [np.zeros(0, F32), np.array([1, 1, 1.5, 2.5], F32)],
     (1, 2, 4, 3), 13),
    ("resize_linear_half_pixel", "Resize", {"mode": "linear"}, [np.zeros(0, F32), np.array([1, 1, 2, 2], F32)],
     (1, 2, 3, 5), 13),
    ("resize_linear_align_corners_sizes", "Resize", {"mode": "linear", "coordinate_transformation_mode":
                                                     "align_corners"},
     [np.zeros(0, F32), np.zeros(0, F32), np.array([1, 2, 7, 4], I64)], (1, 2, 3, 5), 13),
    ("resize_linear_asymmetric", "Resize", {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
     [np.zeros(0, F32), np.array([1, 1, 2, 3], F32)], (1, 2, 3, 4), 13),
    ("pad_reflect", "Pad", {"mode": "reflect"}, [np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)], (1, 2, 4, 5), 13),
    ("pad_edge", "Pad", {"mode": "edge"}, [np.array([0, 0, 2, 0, 0, 0, 1, 3], I64)], (1, 2, 4, 5), 13),
    ("pad_constant_value", "Pad", {}, [np.array([0, 1, 1, 0, 0, 0, 2, 1], I64), np.array(0.5, F32)], (1, 2, 3, 4), 13),
    ("maxpool_ceil", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [], (1, 2, 6, 7), 13),
    ("maxpool_uneven_pads", "MaxPool", {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]}, [], (1, 2, 5, 6), 13),
    ("avgpool_ceil_count_pad", "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                               "ceil_mode": 1, "count_include_pad": 1}, [], (1, 2, 6, 7), 13),
    ("avgpool_exclude_pad", "AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, [], (1, 2, 5, 6), 13),
    ("gather_negative", "Gather", {"axis": 1}, [np.array([[2, -1], [0, 1]], I64)], (2, 3, 4), 13),
    ("softmax_opset11_flattens", "Softmax", {"axis": 1}, [], (2, 3, 4), 11),
    ("softmax_axis", "Softmax", {"axis": 1}, [], (2, 3, 4), 13),
    ("hardsigmoid_paddle", "HardSigmoid", {"alpha": 0.1666666716337204, "beta": 0.5}, [], (2, 3, 4), 13),
    ("hardsigmoid_default", "HardSigmoid", {}, [], (2, 3, 4), 13),
    ("clip_bounds", "Clip", {}, [np.array(-0.5, F32), np.array(0.75, F32)], (2, 3, 4), 13),
    ("leaky_relu", "LeakyRelu", {"alpha": 0.2}, [], (2, 3, 4), 13),
    ("gelu_tanh", "Gelu", {"approximate": "tanh"}, [], (2, 3, 4), 20),
    ("reduce_mean_axes_input", "ReduceMean", {"keepdims": 0}, [np.array([1, -1], I64)], (2, 3, 4), 18),
    ("reduce_sum_keep", "ReduceSum", {}, [np.array([2], I64)], (2, 3, 4), 13),
    ("transpose", "Transpose", {"perm": [0, 2, 3, 1]}, [], (1, 2, 3, 4), 13),
    ("flatten_axis2", "Flatten", {"axis": 2}, [], (2, 3, 4, 5), 13),
    ("unsqueeze_two", "Unsqueeze", {}, [np.array([0, -1], I64)], (2, 3), 13),
    ("squeeze", "Squeeze", {}, [np.array([1], I64)], (2, 1, 3), 13),
    ("reshape_zero_copies", "Reshape", {}, [np.array([0, -1, 2], I64)], (2, 3, 4), 13),
    ("expand", "Expand", {}, [np.array([2, 1, 3, 4], I64)], (1, 3, 1), 13),
    ("pow_constant", "Pow", {}, [np.array(2.0, F32)], (2, 3, 4), 13),
    ("div_vector", "Div", {}, [np.array([1.5, -2.0, 4.0, 0.5], F32)], (2, 3, 4), 13),
    ("sub_from_constant", "Sub", {}, [np.array([[0.25], [-1.0], [2.0]], F32)], (2, 3, 4), 13),
]


def run_case(op, attrs, constants, shape, opset, tmp_path):
    import onnx
    import onnxruntime
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from weightport.api import load
    from weightport.formats.torch.module import CanonicalModule, canonical_state_dict
    names = ["x"] + [f"c{k}" if c.size or c.ndim == 0 else "" for k, c in enumerate(constants)]
    inits = [numpy_helper.from_array(c, f"c{k}") for k, c in enumerate(constants) if c.size or c.ndim == 0]
    graph = helper.make_graph([helper.make_node(op, names, ["y"], name="node", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = str(tmp_path / "op.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    x = np.random.default_rng(11).standard_normal(shape).astype(F32)
    expected = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = load(path)
    module = CanonicalModule(model).eval()
    module.load_state_dict(canonical_state_dict(model), strict=True)
    with torch.no_grad():
        module(torch.from_numpy(x))
    return module.values[model.source.details["outputs"]["y"]].numpy(), expected


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case, tmp_path):
    _, op, attrs, constants, shape, opset = case
    got, expected = run_case(op, attrs, constants, shape, opset, tmp_path)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
