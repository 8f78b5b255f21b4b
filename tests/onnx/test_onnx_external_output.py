"""ONNX with external data as an output, written tensor by tensor (issue 23).

The source is a sharded safetensors checkpoint written by Hugging Face's own ``save_torch_state_dict``
from a torch module; the template is an ONNX model saved by ``onnx.save_model(save_as_external_data=True)``
with scrambled weights, so only a correct write of every tensor passes.  Weights of ``Gemm(transB=1)`` are
stored as torch stores them, weights of ``MatMul`` transposed: the shapes are not square and the values
seeded random, so a missing or extra transpose, or a wrong row order, fails.  The output is read back
by ``onnx.load`` (external data included) and compared bit for bit with torch's tensors (bfloat16
included), and run in onnxruntime against torch's own ``Linear``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import optional_module, require

onnx = optional_module("onnx")
pytestmark = pytest.mark.requires("onnx", "onnxruntime", "torch", "huggingface_hub")

LAYERS = [("up", 24, 40, "Gemm"), ("mid", 40, 56, "MatMul"), ("down", 56, 16, "Gemm")]  # name, in, out, op


def linear_module(torch, dtype):
    """Three bias-less Linear layers (seeded, not square)."""
    torch.manual_seed(7)
    module = torch.nn.Sequential()
    for name, n_in, n_out, _ in LAYERS:
        module.add_module(name, torch.nn.Linear(n_in, n_out, bias=False))
    return module.to(dtype).eval()


def template(path: str, elem_type: int, np_dtype) -> None:
    """The same chain as an ONNX graph over random weights, saved with every tensor in a data file."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(1)
    nodes, weights, value = [], [], "x"
    for name, n_in, n_out, op in LAYERS:
        shape = (n_out, n_in) if op == "Gemm" else (n_in, n_out)
        scrambled = rng.standard_normal(shape).astype(np.float32).astype(np_dtype)
        weights.append(numpy_helper.from_array(scrambled, f"{name}.weight"))
        attrs = {"transB": 1} if op == "Gemm" else {}
        nodes.append(helper.make_node(op, [value, f"{name}.weight"], [f"{name}_out"], name=name, **attrs))
        value = f"{name}_out"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem_type, [1, LAYERS[0][1]])],
                              [helper.make_tensor_value_info(value, elem_type, [1, LAYERS[-1][2]])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=0)


def convert_sharded(run_cli, tmp_path, torch, dtype, elem_type, np_dtype):
    """The module saved by huggingface_hub in shards, converted into the template; returns (state, out)."""
    from huggingface_hub import save_torch_state_dict
    module = linear_module(torch, dtype)
    (tmp_path / "hf").mkdir()
    save_torch_state_dict(module.state_dict(), str(tmp_path / "hf"), max_shard_size=6000)
    index = tmp_path / "hf" / "model.safetensors.index.json"
    assert index.exists() and len(list((tmp_path / "hf").glob("*.safetensors"))) > 1  # really sharded
    template(str(tmp_path / "template.onnx"), elem_type, np_dtype)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    code, _, err = run_cli("convert", index, "-o", out, "--to", "onnx", "--template", tmp_path / "template.onnx",
                           "--quiet")
    assert code == 0, err
    return module, out


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_sharded_state_dict_to_onnx_external_data_is_bit_exact(run_cli, tmp_path, dtype_name):
    torch = require("torch")
    from onnx import TensorProto, numpy_helper
    dtype = getattr(torch, dtype_name)
    elem_type = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype_name]
    np_dtype = numpy_helper.helper.tensor_dtype_to_np_dtype(elem_type)
    module, out = convert_sharded(run_cli, tmp_path, torch, dtype, elem_type, np_dtype)
    assert sorted(os.listdir(out.parent)) == ["model.onnx", "model.onnx.data"]  # staged files all renamed
    assert os.path.getsize(out) < 2000  # the weights are in the data file, not the model
    onnx.checker.check_model(str(out), full_check=True)
    written = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    for name, _, _, op in LAYERS:
        assert written[f"{name}.weight"].data_type == elem_type
        expected = module.state_dict()[f"{name}.weight"]
        expected = expected if op == "Gemm" else expected.T  # MatMul stores in x out
        bits = expected.contiguous().view(torch.int16).numpy()
        np.testing.assert_array_equal(numpy_helper.to_array(written[f"{name}.weight"]).view(np.int16), bits)


def test_onnx_external_data_output_runs_in_onnxruntime_like_torch(run_cli, tmp_path):
    torch = require("torch")
    ort = require("onnxruntime")
    from onnx import TensorProto
    module, out = convert_sharded(run_cli, tmp_path, torch, torch.float32, TensorProto.FLOAT, np.float32)
    x = np.random.default_rng(3).standard_normal((1, LAYERS[0][1])).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_replacing_an_external_data_output_leaves_one_pair(run_cli, tmp_path):
    """Written twice with --force: the model names one data file, the previous one is gone."""
    torch = require("torch")
    from onnx import TensorProto
    _, out = convert_sharded(run_cli, tmp_path, torch, torch.float32, TensorProto.FLOAT, np.float32)
    code, _, err = run_cli("convert", tmp_path / "hf" / "model.safetensors.index.json", "-o", out, "--to", "onnx",
                           "--template", tmp_path / "template.onnx", "--force", "--quiet")
    assert code == 0, err
    files = sorted(os.listdir(out.parent))
    locations = {e.value for t in onnx.load(str(out), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert len(files) == 2 and locations == {files[1]}, (files, locations)
