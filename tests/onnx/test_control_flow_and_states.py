"""Graph shapes real exporters make beyond one input and one output (issue 17): extra graph inputs (an RNN's
initial h/c states, a second feature input), an LSTM/GRU's final states Y_h/Y_c used downstream or as graph
outputs (silero VAD), and If/Loop control flow whose subgraphs hold constants.  Graphs are written by the
real torch.onnx exporter or onnx.helper; truth is onnxruntime's output of the original file, with seeded,
non-zero, asymmetric inputs (a state fed in the wrong place, or not at all, changes every output)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import fixture_path

pytestmark = pytest.mark.requires("onnx", "onnxruntime", "torch", "safetensors")

SILERO = fixture_path("real", "onnx", "torch_silero_vad_lstm.onnx")


def onnxruntime_run(path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def converted_outputs(path, feeds: dict[str, np.ndarray], tmp_path) -> dict[str, np.ndarray]:
    """The source converted to a torch state_dict, loaded strictly into the canonical module, run on every
    graph input; every graph output by name."""
    import torch
    from safetensors.torch import load_file
    from weightport.api import convert, load
    from weightport.formats.torch.module import CanonicalModule
    out = str(tmp_path / "converted.safetensors")
    convert(str(path), out)
    model = load(str(path))
    module = CanonicalModule(model).eval()
    module.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        module(*[torch.from_numpy(feeds[name]) for name in model.source.details["inputs"]])
    return {name: module.values[layer].numpy() for name, layer in model.source.details["outputs"].items()}


def assert_all_outputs_match(path, feeds, tmp_path, atol=1e-5):
    expected = onnxruntime_run(path, feeds)
    got = converted_outputs(path, feeds, tmp_path)
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=atol, err_msg=name)
    return expected


def silero_feeds(length: int = 6, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((length, 576)).astype(np.float32),
            "h": rng.standard_normal((1, 1, 128)).astype(np.float32),
            "c": (0.5 * rng.standard_normal((1, 1, 128))).astype(np.float32)}


# -- extra graph inputs and state outputs --------------------------------------------------------------------
def test_silero_initial_state_is_fed_and_final_states_are_computed(tmp_path):
    """silero's graph takes (input, h, c) and gives (speech_probs, hn, cn): all three outputs match
    onnxruntime with a non-zero initial state, which changes every one of them."""
    feeds = silero_feeds()
    expected = assert_all_outputs_match(SILERO, feeds, tmp_path)
    zero = onnxruntime_run(SILERO, {**feeds, "h": np.zeros_like(feeds["h"]), "c": np.zeros_like(feeds["c"])})
    for name in expected:  # the state matters: a module starting from zeros would fail the check above
        assert np.abs(zero[name] - expected[name]).max() > 1e-3, name


def export(module, args, names, outputs, path, dynamic=None):
    import torch
    with torch.no_grad():
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic)
    return path


def recurrent_model(kind: str, bidirectional: bool):
    """An LSTM/GRU (after a projection, as real models have one) taking its initial state as graph inputs, its
    final h used downstream by a Linear, its sequence and final states as graph outputs (torch.onnx writes
    Y_h/Y_c of the ONNX node)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project = nn.Linear(5, 5)
            self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(5, 7, bidirectional=bidirectional)
            self.head = nn.Linear(7, 3)

        def forward(self, x, h, *c):
            y, state = self.rnn(self.project(x), (h, c[0]) if c else h)
            final = state[0] if isinstance(state, tuple) else state
            return (y, self.head(final)) + tuple(state if isinstance(state, tuple) else (state,))
    torch.manual_seed(3)
    return Net()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_torch_onnx_rnn_with_state_inputs_and_outputs(kind, bidirectional, tmp_path):
    import torch
    directions = 2 if bidirectional else 1
    rng = np.random.default_rng(11)
    feeds = {"x": rng.standard_normal((4, 2, 5)).astype(np.float32),
             "h": rng.standard_normal((directions, 2, 7)).astype(np.float32)}
    if kind == "lstm":
        feeds["c"] = rng.standard_normal((directions, 2, 7)).astype(np.float32)
    outputs = ["y", "head", "hn"] + (["cn"] if kind == "lstm" else [])
    path = export(recurrent_model(kind, bidirectional), tuple(torch.from_numpy(v) for v in feeds.values()),
                  list(feeds), outputs, tmp_path / f"{kind}.onnx")
    expected = assert_all_outputs_match(path, feeds, tmp_path)
    assert expected["hn"].shape == (directions, 2, 7)


def two_input_model():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, (3, 2))
            self.side = nn.Linear(4, 3)

        def forward(self, image, features):
            return self.conv(image).mean(dim=(2, 3)) * torch.tanh(self.side(features))
    torch.manual_seed(4)
    return Net()


def two_input_feeds(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    return {"image": rng.standard_normal((batch, 2, 7, 6)).astype(np.float32),
            "features": rng.standard_normal((batch, 4)).astype(np.float32)}


def test_a_second_feature_input_converts_and_traces(run_cli, tmp_path):
    """A graph of two feature inputs: converted to torch it matches onnxruntime; ``--to onnx`` traces a
    graph of the same two inputs that onnxruntime runs to the source's output at another batch size."""
    import torch
    feeds = two_input_feeds()
    path = export(two_input_model(), tuple(torch.from_numpy(v) for v in feeds.values()), list(feeds), ["y"],
                  tmp_path / "two.onnx", {"image": {0: "n"}, "features": {0: "n"}, "y": {0: "n"}})
    assert_all_outputs_match(path, feeds, tmp_path)
    code, _, err = run_cli("convert", path, "-o", tmp_path / "traced.onnx", "--to", "onnx")
    assert code == 0, err
    other = two_input_feeds(batch=3)
    written = onnxruntime_run(tmp_path / "traced.onnx", {"input": other["image"], "features": other["features"]})
    np.testing.assert_allclose(written["output"], onnxruntime_run(path, other)["y"], rtol=0, atol=1e-5)


def test_traced_silero_keeps_its_state_inputs_and_outputs(run_cli, tmp_path):
    code, _, err = run_cli("convert", SILERO, "-o", tmp_path / "silero.onnx", "--to", "onnx")
    assert code == 0, err
    feeds = silero_feeds(length=9, seed=8)
    expected = onnxruntime_run(SILERO, feeds)
    got = onnxruntime_run(tmp_path / "silero.onnx", feeds)
    assert list(got) == ["output", "hn", "cn"]
    for source, written in (("speech_probs", "output"), ("hn", "hn"), ("cn", "cn")):
        np.testing.assert_allclose(got[written], expected[source], rtol=0, atol=1e-5, err_msg=source)


def test_validate_feeds_every_input_from_an_npz(run_cli, tmp_path):
    """validate --input X.npz (one array per graph input, by name): the whole-model check feeds the initial
    state; the same arrays with h and c swapped fail it, so the state is really fed where it belongs."""
    feeds = silero_feeds()
    np.savez(tmp_path / "x.npz", **feeds)
    np.savez(tmp_path / "swapped.npz", **{**feeds, "h": feeds["c"], "c": feeds["h"]})
    np.save(tmp_path / "y.npy", onnxruntime_run(SILERO, feeds)["speech_probs"])
    assert run_cli("convert", SILERO, "-o", tmp_path / "m.safetensors")[0] == 0
    code, out, err = run_cli("validate", SILERO, tmp_path / "m.safetensors", "--input", tmp_path / "x.npz",
                             "--expected", tmp_path / "y.npy")
    assert code == 0, out + err
    assert "PASS whole model vs recorded output" in out
    code, out, err = run_cli("validate", SILERO, tmp_path / "m.safetensors", "--input", tmp_path / "swapped.npz",
                             "--expected", tmp_path / "y.npy")
    assert code != 0 and "FAIL whole model vs recorded output" in out, out + err
    np.savez(tmp_path / "short.npz", input=feeds["input"])
    code, out, err = run_cli("validate", SILERO, tmp_path / "m.safetensors", "--input", tmp_path / "short.npz",
                             "--expected", tmp_path / "y.npy")
    assert code == 2 and "'h'" in err and "internal error" not in err and err.count("\n") == 1


@pytest.mark.parametrize("target,name", [("torch", "m.safetensors"), ("onnx", "m.onnx")])
def test_validate_without_recorded_arrays_runs_every_input(target, name, run_cli, tmp_path):
    """Without --input, onnxruntime runs the source on seeded random arrays for every graph input, and the
    converted model is run on the same arrays."""
    assert run_cli("convert", SILERO, "-o", tmp_path / name, "--to", target)[0] == 0
    code, out, err = run_cli("validate", SILERO, tmp_path / name, "--samples", "1")
    assert code == 0, out + err
    assert "PASS whole model vs" in out and "onnxruntime" in out and "SKIP whole" not in out


# -- control flow --------------------------------------------------------------------------------------------
def if_graph(path, condition: str):
    """Conv, then If whose branches multiply by different (1, 3, 1, 1) constants held in the branch graphs;
    ``condition`` is ``constant`` (a Constant node True), ``folded`` (Equal of two Constant nodes) or
    ``input`` (a graph input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(21)

    def branch(name, scale):
        k = numpy_helper.from_array((rng.standard_normal((1, 3, 1, 1)) * scale).astype(np.float32), name + "_k")
        return helper.make_graph([helper.make_node("Mul", ["conv_out", name + "_k"], [name + "_y"])], name, [],
                                 [helper.make_tensor_value_info(name + "_y", TensorProto.FLOAT, [1, 3, 5, 4])], [k])
    weight = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 2)).astype(np.float32), "conv.weight")
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["conv_out"], pads=[1, 0, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 4])]
    if condition == "constant":
        nodes.append(helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))))
    elif condition == "folded":
        nodes += [helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(np.array(3, np.int64))),
                  helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.array(4, np.int64))),
                  helper.make_node("Equal", ["a", "b"], ["cond"])]
    else:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch("then", 1.0),
                                  else_branch=branch("else", 2.0)))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 4])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def all_constants(path) -> set[str]:
    """Every initializer and Constant node of the file, those inside subgraphs named <node>/<attribute>/<name>."""
    import onnx
    proto = onnx.load(str(path))
    found = set()

    def walk(graph, prefix):
        found.update(prefix + t.name for t in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                found.add(prefix + node.output[0])
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g, f"{prefix}{node.name or node.output[0]}/{attribute.name}/")
    walk(proto.graph, "")
    return found


def explained_constants(run_cli, path) -> dict[str, list[str]]:
    code, out, err = run_cli("explain", path, "--json", "--to", "npz")
    assert code == 0, err
    return json.loads(out)["constants"]


@pytest.mark.parametrize("condition", ["constant", "folded"])
def test_a_constant_condition_if_is_inlined(condition, run_cli, tmp_path):
    """The taken branch runs (torch matches onnxruntime; the two branches differ, so the wrong one fails);
    explain accounts for every constant, the untaken branch's and the condition's as folded; --to onnx
    traces the inlined graph."""
    path = if_graph(tmp_path / "if.onnx", condition)
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 4)).astype(np.float32)
    assert_all_outputs_match(path, {"x": x}, tmp_path)
    constants = explained_constants(run_cli, path)
    assert set(constants) == all_constants(path)
    untaken = "choose/then_branch/then_k" if condition == "folded" else "choose/else_branch/else_k"
    assert constants[untaken][0] == "folded" and "untaken" in constants[untaken][1]
    assert all(how in ("converted", "folded", "structural", "kept") for how, _ in constants.values())
    code, _, err = run_cli("convert", path, "-o", tmp_path / "traced.onnx", "--to", "onnx")
    assert code == 0, err
    np.testing.assert_allclose(onnxruntime_run(tmp_path / "traced.onnx", {"input": x})["output"],
                               onnxruntime_run(path, {"x": x})["y"], rtol=0, atol=1e-5)


def loop_graph(path):
    """A Loop whose body adds a (3,) constant held in the body graph to its carried value, three times."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(22)
    step = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "step")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "step"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2, 3])], [step])
    weight = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc.weight")
    trips = numpy_helper.from_array(np.array(3, np.int64), "trips")
    keep = numpy_helper.from_array(np.array(True), "keep")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "fc.weight"], ["h"], transB=1),
                               helper.make_node("Loop", ["trips", "keep", "h"], ["y"], name="repeat", body=body)],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [weight, trips, keep])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("make", [lambda p: if_graph(p, "input"), loop_graph], ids=["if", "loop"])
def test_control_flow_subgraph_constants_are_kept_with_a_warning(make, run_cli, tmp_path):
    """An If on a runtime condition, a Loop: their subgraphs' constants are kept as stored (named buffers,
    bit-identical to the file's), a warning names them, --strict refuses in one line, and whatever needs
    the subgraphs run refuses in one line: never an internal error, never a constant dropped."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    path = make(tmp_path / "cf.onnx")
    constants = explained_constants(run_cli, path)
    assert set(constants) == all_constants(path)
    inner = {name: where for name, (how, where) in constants.items() if "/" in name}
    assert inner and all(constants[name][0] == "kept" for name in inner)
    code, _, err = run_cli("convert", path, "-o", tmp_path / "m.safetensors")
    assert code == 0, err
    assert "runs subgraphs (If/Loop/Scan)" in err and all(where in err for where in inner.values())
    stored = load_file(str(tmp_path / "m.safetensors"))
    proto = onnx.load(str(path))
    for attribute in next(n for n in proto.graph.node if n.op_type in ("If", "Loop")).attribute:
        for tensor in attribute.g.initializer:
            name = f"{proto.graph.node[-1].name}/{attribute.name}/{tensor.name}"
            np.testing.assert_array_equal(stored[constants[name][1]], numpy_helper.to_array(tensor))
    code, _, err = run_cli("convert", path, "-o", tmp_path / "strict.safetensors", "--strict")
    assert code == 2 and "runs subgraphs" in err and err.count("\n") == 1
    code, _, err = run_cli("convert", path, "-o", tmp_path / "m.onnx", "--to", "onnx")
    assert code == 2 and "runs subgraphs" in err and err.count("\n") == 1 and "internal error" not in err
