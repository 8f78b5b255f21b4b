"""Real ONNX files as real exporters wrote them (issue 17): Paddle2ONNX, tf2onnx and torch.onnx models shipped
inside pip packages (fixtures/real/, re-extracted by fixtures/real/extract_onnx.py), and small graphs of each
exporter pattern.  Truth is onnxruntime's output of the original file, never our own numbers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import fixture_path

pytestmark = pytest.mark.requires("onnx", "onnxruntime", "torch", "safetensors")

CORPUS = ("paddle_ppocr_cls", "paddle_ppocrv4_det", "paddle_ppocrv4_rec", "tf2onnx_basic_pitch_nmp",
          "torch_silero_vad_lstm", "paddle_picodet_layout_cdla")
TARGETS = (("keras", ".h5"), ("npz", ".npz"), ("java", ""), ("onnx", ".onnx"), ("theano", ".pkl"))


def corpus(name: str) -> str:
    return fixture_path("real", "onnx", name + ".onnx")


def recorded(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    io = np.load(fixture_path("real", "onnx", name + ".io.npz"))
    inputs = {k[len("input__"):]: io[k] for k in io.files if k.startswith("input__")}
    outputs = {k[len("output__"):]: io[k] for k in io.files if k.startswith("output__")}
    return inputs, outputs


def run_converted(model, path: str, x):
    """The canonical torch module with the converted file's state_dict (strict), run on ``x``: one array, or a
    dict of every graph input by name."""
    import torch
    from safetensors.torch import load_file
    from weightport.formats.torch.module import CanonicalModule
    module = CanonicalModule(model).eval()
    module.load_state_dict(load_file(path), strict=True)
    feeds = [x[name] for name in model.source.details["inputs"]] if isinstance(x, dict) else [x]
    with torch.no_grad():
        module(*[torch.from_numpy(a) for a in feeds])
    return module


def onnxruntime_outputs(path: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("name", CORPUS)
def test_the_recorded_outputs_are_onnxruntimes(name):
    """The stored pairs are what onnxruntime computes on the original file today."""
    inputs, outputs = recorded(name)
    fresh = onnxruntime_outputs(corpus(name), inputs)
    for key, value in outputs.items():
        np.testing.assert_allclose(fresh[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CORPUS)
def test_converts_to_torch_and_matches_onnxruntime(name, tmp_path):
    from weightport.api import convert, load
    out = str(tmp_path / "model.safetensors")
    convert(corpus(name), out)
    model = load(corpus(name))
    inputs, outputs = recorded(name)
    module = run_converted(model, out, inputs)
    mapped = model.source.details["outputs"]
    compared = 0
    for key, expected in outputs.items():
        got = module.values[mapped[key]].numpy()
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale, err_msg=f"{name}: output {key}")
        compared += 1
    assert compared == len(outputs)  # an RNN's final states Y_h, Y_c included


ONNX_FIXTURES = sorted(f for f in os.listdir(fixture_path("onnx")) if f.endswith(".onnx"))


@pytest.mark.parametrize("path", [corpus(name) for name in CORPUS] + [fixture_path("onnx", f) for f in ONNX_FIXTURES],
                         ids=lambda path: os.path.basename(path))
def test_every_source_constant_is_accounted_for_in_explain(path, run_cli):
    """converted / folded / structural / kept, each with where it went; kept and converted ones are keys."""
    import json
    import onnx
    proto = onnx.load(path, load_external_data=False)
    sources = {t.name for t in proto.graph.initializer} | {
        n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
    code, out, err = run_cli("explain", path, "--json", "--to", "npz")  # npz holds every canonical tensor
    assert code == 0, err
    report = json.loads(out)
    constants = report["constants"]
    assert set(constants) == sources
    keys = {row["key"] for row in report["tensors"]}
    for source, (how, where) in constants.items():
        assert how in ("converted", "folded", "structural", "kept"), (source, how)
        if how in ("converted", "kept") or (how == "folded" and where.endswith(".bias")):
            assert where in keys, (source, how, where)


@pytest.mark.parametrize("name", CORPUS)
@pytest.mark.parametrize("target,ext", TARGETS)
def test_every_target_converts_or_refuses_without_internal_error(name, target, ext, run_cli, tmp_path):
    code, _, err = run_cli("convert", corpus(name), "-o", tmp_path / f"out{ext}", "--to", target)
    assert "internal error" not in err
    assert code in (0, 2), err
    assert code == 0 or err.count("\n") == 1  # a refusal is one line naming the problem and the fix


@pytest.mark.parametrize("name", CORPUS)
def test_validate_cli_passes_against_onnxruntime(name, run_cli, tmp_path):
    """validate: every weighted layer checked (a kept constant against onnxruntime's view of it), the whole
    model against onnxruntime's recorded output of the graph's first declared output (what the rebuilt module
    gives, as onnxruntime does; PicoDet's is not its last layer's)."""
    from weightport.api import load
    inputs, outputs = recorded(name)
    model = load(corpus(name))
    last = next(iter(model.source.details["outputs"]))
    if len(inputs) > 1:  # every graph input, by name (silero's initial h and c)
        np.savez(tmp_path / "x.npz", **inputs)
        given = tmp_path / "x.npz"
    else:
        np.save(tmp_path / "x.npy", next(iter(inputs.values())))
        given = tmp_path / "x.npy"
    np.save(tmp_path / "y.npy", outputs[last])
    assert run_cli("convert", corpus(name), "-o", tmp_path / "m.safetensors")[0] == 0
    code, out, err = run_cli("validate", corpus(name), tmp_path / "m.safetensors",
                             "--input", given, "--expected", tmp_path / "y.npy")
    assert code == 0, out + err
    assert "PASS whole model vs recorded output" in out and "SKIP" not in out
    if name.endswith("rec"):
        assert "PASS layer layer_norm_43.w_0 (Constant)" in out


OTHER_SIZES = {"paddle_ppocr_cls": (3, 3, 48, 160), "paddle_ppocrv4_det": (2, 3, 96, 128),
               "paddle_ppocrv4_rec": (2, 3, 48, 160),
               "tf2onnx_basic_pitch_nmp": (2, 43844, 1), "torch_silero_vad_lstm": (5, 576),
               "paddle_picodet_layout_cdla": (1, 3, 800, 608)}  # a fixed-size graph: only its own size


@pytest.mark.parametrize("name", CORPUS)
def test_traced_onnx_keeps_the_dynamic_axes(name, run_cli, tmp_path):
    """``--to onnx`` of a graph with dynamic batch/height/width/length (no int(None)): the written graph runs
    at sizes other than the traced one and gives the source's output there (onnxruntime on both files)."""
    import onnxruntime
    code, _, err = run_cli("convert", corpus(name), "-o", tmp_path / "m.onnx", "--to", "onnx")
    assert code == 0, err
    x = np.random.default_rng(23).standard_normal(OTHER_SIZES[name]).astype(np.float32)
    source = onnxruntime.InferenceSession(corpus(name), providers=["CPUExecutionProvider"])
    feeds = {i.name: x if k == 0 else np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for k, i in enumerate(source.get_inputs())}
    expected = source.run(None, feeds)
    written = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [d for d in written.get_inputs()[0].shape if isinstance(d, str)]  # declared dynamic
    got = written.run(None, dict(zip([i.name for i in written.get_inputs()], feeds.values())))[0]
    errors = [float(np.abs(e - got).max()) for e in expected if e.shape == got.shape]
    assert errors and min(errors) < 1e-4, (got.shape, [e.shape for e in expected], errors)


def test_traced_rec_averages_a_window_past_a_small_map_as_onnxruntime_does(run_cli, tmp_path):
    """PP-OCRv4 rec's last AveragePool (3x2 window, count_include_pad 0) on the 1x2 map a 5x5 input leaves:
    onnxruntime runs the window past the map and averages the map's own values only; the traced graph must
    say count_include_pad 0 too (torch's default 1 divides by 6: 2.3% off).  Truth: onnxruntime on the source."""
    import onnxruntime
    assert run_cli("convert", corpus("paddle_ppocrv4_rec"), "-o", tmp_path / "m.onnx", "--to", "onnx")[0] == 0
    x = np.random.default_rng(5).uniform(-1.0, 1.0, (2, 3, 5, 7)).astype(np.float32)
    expected = onnxruntime_outputs(corpus("paddle_ppocrv4_rec"), {"x": x})
    written = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = written.run(None, {"input": x})[0]
    want = next(iter(expected.values()))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_traced_picodet_keeps_the_source_output_order(run_cli, tmp_path):
    """PicoDet's eight heads: the traced graph gives them in the source graph's order and names (the model's
    last layer named ``output``), each equal to the source's in onnxruntime, so a check comparing the first
    outputs compares the same head."""
    import onnxruntime
    assert run_cli("convert", corpus("paddle_picodet_layout_cdla"), "-o", tmp_path / "m.onnx", "--to", "onnx")[0] == 0
    x = np.random.default_rng(9).uniform(-1.0, 1.0, (1, 3, 800, 608)).astype(np.float32)
    expected = onnxruntime_outputs(corpus("paddle_picodet_layout_cdla"), {"image": x})
    written = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in written.get_outputs()]
    assert names == list(expected)[:-1] + ["output"]
    for (key, want), got in zip(expected.items(), written.run(None, {"input": x})):
        assert got.shape == want.shape, key
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=key)


def test_validate_traced_picodet_compares_the_same_head(run_cli, tmp_path):
    assert run_cli("convert", corpus("paddle_picodet_layout_cdla"), "-o", tmp_path / "m.onnx", "--to", "onnx")[0] == 0
    code, out, err = run_cli("validate", corpus("paddle_picodet_layout_cdla"), tmp_path / "m.onnx", "--samples", "1")
    assert code == 0, out + err
    assert "PASS whole model" in out


def test_validate_picodet_to_torch_runs_its_fixed_batch_and_first_declared_head(run_cli, tmp_path):
    """PicoDet is exported with a fixed batch of 1 and declares its outputs in another order than its nodes:
    without ``--samples`` the reference takes the graph's batch (it used to be a skip), and the safetensors'
    rebuilt module gives the graph's first declared output, onnxruntime's first (with ``--samples 1`` it used to
    give its last layer's, a false FAIL on a correct port).  A flipped kernel still fails."""
    from safetensors.numpy import load_file, save_file
    path = tmp_path / "m.safetensors"
    assert run_cli("convert", corpus("paddle_picodet_layout_cdla"), "-o", path)[0] == 0
    code, out, err = run_cli("validate", corpus("paddle_picodet_layout_cdla"), path)
    assert code == 0, out + err
    assert "PASS whole model vs onnxruntime running the source (seed 0, 1 samples)" in out
    from safetensors import safe_open
    with safe_open(str(path), "np") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    key = next(k for k, v in tensors.items() if v.ndim == 4 and v.shape[-1] == 3 and v.shape[-2] == 3)
    tensors[key] = np.ascontiguousarray(tensors[key][..., ::-1, ::-1])
    save_file(tensors, str(tmp_path / "flipped.safetensors"), metadata=metadata)
    code, out, err = run_cli("validate", corpus("paddle_picodet_layout_cdla"), tmp_path / "flipped.safetensors")
    assert code != 0 and "FAIL whole model" in out, out + err


# -- each exporter pattern on a small graph, seeded and asymmetric -----------------------------------------
def save_graph(tmp_path, nodes, inits, in_shape, out_shape, opset=13, name="g.onnx"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = str(tmp_path / name)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def check_against_onnxruntime(path, x, tmp_path):
    from weightport.api import convert, load
    out = str(tmp_path / "out.safetensors")
    convert(path, out)
    model = load(path)
    module = run_converted(model, out, x)
    expected = onnxruntime_outputs(path, {"x": x})["y"]
    np.testing.assert_allclose(module.values[model.source.details["outputs"]["y"]].numpy(), expected, atol=1e-5)
    return model


@pytest.mark.parametrize("bias_shape", [(1, 1, 1, 1), (1,), (1, 1, 1)])
def test_one_value_bias_on_a_one_channel_conv_is_folded_not_dropped(bias_shape, tmp_path):
    from onnx import helper
    rng = np.random.default_rng(5)
    inits = {"w": rng.standard_normal((1, 3, 3, 2)).astype(np.float32),
             "b": np.full(bias_shape, 0.75, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "b"], ["y"], name="bias_add")]
    path = save_graph(tmp_path, nodes, inits, [2, 3, 5, 6], [2, 1, 3, 5])
    model = check_against_onnxruntime(path, rng.standard_normal((2, 3, 5, 6)).astype(np.float32), tmp_path)
    conv = next(layer for layer in model.layers if layer.kind == "conv")
    assert conv.attrs["folded_bias"]["node"] == "bias_add"
    assert model.source.details["constants"]["b"][0] == "folded"
    from safetensors import safe_open
    with safe_open(str(tmp_path / "out.safetensors"), "np") as handle:  # recorded in the output's metadata
        assert '"folded_bias":{"node":"bias_add","constant":"b"' in handle.metadata()["weightport.graph"]


def test_paddle_bias_through_reshape_and_convtranspose_add(tmp_path):
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(6)
    inits = {"wt": rng.standard_normal((3, 2, 2, 2)).astype(np.float32),
             "bt": rng.standard_normal((1, 2, 1, 1)).astype(np.float32)}
    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1, 1, 1])))
    bias = helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(
        rng.standard_normal(3).astype(np.float32)))
    nodes = [shape, bias, helper.make_node("Reshape", ["b", "shape"], ["b4"]),
             helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "b4"], ["a"]),
             helper.make_node("ConvTranspose", ["a", "wt"], ["t"], strides=[2, 2]),
             helper.make_node("Add", ["t", "bt"], ["y"])]
    x = rng.standard_normal((1, 4, 6, 7)).astype(np.float32)
    inits["w"] = rng.standard_normal((3, 4, 2, 3)).astype(np.float32)
    path = save_graph(tmp_path, nodes, inits, [1, 4, 6, 7], None)
    model = check_against_onnxruntime(path, x, tmp_path)
    folded = [layer.attrs["folded_bias"]["constant"] for layer in model.layers if "folded_bias" in layer.attrs]
    assert sorted(folded) == ["b", "bt"]


def test_tf2onnx_matmul_add_with_a_row_bias(tmp_path):
    from onnx import helper
    rng = np.random.default_rng(7)
    inits = {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": rng.standard_normal((1, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    path = save_graph(tmp_path, nodes, inits, [2, 5], [2, 3])
    model = check_against_onnxruntime(path, rng.standard_normal((2, 5)).astype(np.float32), tmp_path)
    assert next(layer for layer in model.layers if layer.kind == "dense").source_class == "MatMul+Add"


def test_unknown_weighted_op_is_kept_with_a_warning_and_strict_refuses(run_cli, tmp_path):
    from onnx import helper
    rng = np.random.default_rng(8)
    inits = {"table": rng.standard_normal((3, 4)).astype(np.float32)}
    nodes = [helper.make_node("FancyOp", ["x", "table"], ["y"], name="fancy", domain="com.example")]
    path = save_graph(tmp_path, nodes, inits, [1, 3, 4], [1, 3, 4])
    code, _, err = run_cli("convert", path, "-o", tmp_path / "a.safetensors")
    assert code == 0 and "FancyOp" in err and "table.value" in err
    code, _, err = run_cli("convert", path, "-o", tmp_path / "b.safetensors", "--strict")
    assert code == 2 and "fancy" in err and "internal error" not in err
    assert not os.path.exists(tmp_path / "b.safetensors")


def test_layer_names_colliding_with_module_attributes_build(tmp_path):
    """YOLOv8-style names (``model.0.conv``, ``/model.22/dfl/conv/Conv``) never crash module building."""
    from onnx import helper
    rng = np.random.default_rng(9)
    inits = {"model.0.conv.weight": rng.standard_normal((2, 3, 1, 2)).astype(np.float32),
             "onnx::Conv_7": rng.standard_normal((2, 2, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "model.0.conv.weight"], ["a"], name="/model.0/conv/Conv"),
             helper.make_node("Sigmoid", ["a"], ["s"], name="/model.0/act/Sigmoid"),
             helper.make_node("Conv", ["s", "onnx::Conv_7"], ["y"], name="/model.22/dfl/conv/Conv")]
    path = save_graph(tmp_path, nodes, inits, [1, 3, 4, 5], [1, 2, 4, 4])
    check_against_onnxruntime(path, rng.standard_normal((1, 3, 4, 5)).astype(np.float32), tmp_path)


def test_a_folded_bias_goes_back_into_its_add_constant_of_a_template(run_cli, tmp_path):
    """ONNX -> safetensors -> ONNX into the Paddle graph itself: a changed folded bias lands in the Add's
    (1, 1, 1, 1) constant, the folded (1, 24, 1, 1) one comes back bit-identical."""
    import onnx
    from onnx import numpy_helper
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    source = corpus("paddle_ppocrv4_det")
    assert run_cli("convert", source, "-o", tmp_path / "m.safetensors")[0] == 0
    tensors = load_file(str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), "np") as handle:
        metadata = handle.metadata()
    tensors["p2o.ConvTranspose.2.bias"] = np.array([0.123], np.float32)
    save_file(tensors, str(tmp_path / "changed.safetensors"), metadata=metadata)
    code, _, err = run_cli("convert", tmp_path / "changed.safetensors", "-o", tmp_path / "back.onnx", "--to", "onnx",
                           "--template", source)
    assert code == 0, err

    def constants(path):
        graph = onnx.load(str(path)).graph
        found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        found.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant"})
        return found
    before, after = constants(source), constants(tmp_path / "back.onnx")
    assert after["conv2d_transpose_1.b_0"].shape == before["conv2d_transpose_1.b_0"].shape
    assert after["conv2d_transpose_1.b_0"].reshape(-1).tolist() == [np.float32(0.123)]
    assert np.array_equal(after["conv2d_transpose_0.b_0"], before["conv2d_transpose_0.b_0"])
