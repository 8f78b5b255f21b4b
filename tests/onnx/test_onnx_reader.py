"""ONNX reader: models exported by torch.onnx.export and built with onnx.helper (fixtures/onnx), with
outputs recorded by onnxruntime; the ONNX Conv/ConvTranspose conformance cases shipped with onnx;
hostile external-data locations."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule
from tests.conftest import fixture_path

GRAPHS = ["torch_cnn", "torch_cnn_external", "torch_conv1d", "torch_conv3d", "torch_convtranspose",
          "helper_autopad_gemm"]


def convert(run_cli, tmp_path, name, *extra):
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", fixture_path("onnx", f"{name}.onnx"), "-o", out, *extra)
    assert code == 0, err
    return load_file(str(out))


@pytest.mark.parametrize("name", GRAPHS)
def test_onnx_graph_reproduces_onnxruntime_in_torch(run_cli, tmp_path, name):
    state = convert(run_cli, tmp_path, name)
    module = CanonicalModule(load(fixture_path("onnx", f"{name}.onnx"))).eval()
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = module(torch.from_numpy(np.load(fixture_path("onnx", f"{name}.input.npy")))).numpy()
    expected = np.load(fixture_path("onnx", f"{name}.output.npy"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_auto_pad_same_upper_and_lower_become_explicit_pads():
    model = load(fixture_path("onnx", "helper_autopad_gemm.onnx"))
    assert model.layer("conv_upper").attrs["pads"] == [[0, 1], [1, 2]]   # odd pad at the end
    assert model.layer("conv_lower").attrs["pads"] == [[1, 0], [1, 0]]   # odd pad at the start


def test_bidirectional_lstm_gates_reordered_for_torch(run_cli, tmp_path):
    state = convert(run_cli, tmp_path, "lstm_bidirectional")
    lstm = torch.nn.LSTM(2, 3, bidirectional=True)
    lstm.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()}, strict=True)
    x = np.load(fixture_path("onnx", "lstm_bidirectional.input.npy"))       # (seq, batch, features)
    expected = np.load(fixture_path("onnx", "lstm_bidirectional.output.npy"))  # (seq, dirs, batch, hidden)
    with torch.no_grad():
        got = lstm(torch.from_numpy(x))[0].numpy()                           # (seq, batch, dirs * hidden)
    np.testing.assert_allclose(got, expected.transpose(0, 2, 1, 3).reshape(5, 2, 6), rtol=1e-5, atol=1e-6)


def test_gru_linear_before_reset_matches_torch_and_the_other_kind_is_refused(run_cli, tmp_path):
    state = convert(run_cli, tmp_path, "gru_linear_before_reset")
    gru = torch.nn.GRU(2, 3)
    gru.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()}, strict=True)
    x = np.load(fixture_path("onnx", "gru_linear_before_reset.input.npy"))
    with torch.no_grad():
        got = gru(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, np.load(fixture_path("onnx", "gru_linear_before_reset.output.npy"))[:, 0],
                               rtol=1e-5, atol=1e-6)
    code, _, err = run_cli("convert", fixture_path("onnx", "gru_reset_before.onnx"), "-o", tmp_path / "g.safetensors")
    assert code == 2 and "reset_after=False" in err


def test_onnx_cnn_ports_to_keras3(run_cli, tmp_path):
    """OIHW correlation kernels -> Keras HWIO; Dense rows permuted for Keras's channels-last Flatten."""
    import keras
    out = tmp_path / "cnn.h5"
    code, _, err = run_cli("convert", fixture_path("onnx", "torch_cnn.onnx"), "-o", out, "--to", "keras")
    assert code == 0, err
    L = keras.layers
    inputs = keras.Input((17, 15, 3))
    x = L.Conv2D(4, (3, 2), activation="relu")(inputs)  # the exporter folded BatchNorm into this conv
    x = L.ZeroPadding2D(((1, 1), (0, 0)))(x)
    x = L.Conv2D(6, (2, 3), strides=2, groups=2)(x)
    x = L.Conv2D(6, 3, dilation_rate=2, groups=6)(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(5)(x))
    model.load_weights(str(out))
    x = np.load(fixture_path("onnx", "torch_cnn.input.npy")).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(fixture_path("onnx", "torch_cnn.output.npy")),
                               rtol=1e-5, atol=1e-5)


def external_copy(tmp_path, location: str | None = None, offset: int | None = None):
    model = onnx.load_model(fixture_path("onnx", "torch_cnn_external.onnx"), load_external_data=False)
    tensor = model.graph.initializer[0]
    for entry in tensor.external_data:
        if entry.key == "location" and location is not None:
            entry.value = location
        if entry.key == "offset" and offset is not None:
            entry.value = str(offset)
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    import shutil
    shutil.copy(fixture_path("onnx", "torch_cnn_external.data"), folder / "torch_cnn_external.data")
    path = folder / "m.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "offset"])
def test_hostile_external_data_is_refused(run_cli, tmp_path, case):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 4096)
    if case == "absolute":
        path = external_copy(tmp_path, location=str(outside))
    elif case == "dotdot":
        path = external_copy(tmp_path, location="../secret.bin")
    elif case == "symlink":
        path = external_copy(tmp_path, location="link.bin")
        os.symlink(outside, path.parent / "link.bin")
    else:
        path = external_copy(tmp_path, offset=10 ** 9)
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", path, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert ("outside" in err or "not a plain name" in err) if case != "offset" else "does not fit" in err
    assert not out.exists()


def conformance_cases():
    from onnx.backend.test.case.node import collect_testcases
    return [c for op in ("Conv", "ConvTranspose") for c in collect_testcases(op)]


REFUSED = {"test_convtranspose_output_shape": "output_shape instead of pads",
           "test_convtranspose_kernel_shape": "output_shape instead of pads",
           "test_convtranspose_autopad_same": "auto_pad on ConvTranspose"}


@pytest.mark.parametrize("case", conformance_cases(), ids=lambda c: c.name)
def test_onnx_conformance_conv_cases(run_cli, tmp_path, case):
    """The case's W (a graph input) becomes an initializer; weightport's canonical weight and attributes,
    run in torch.nn.functional, must give the conformance output."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    graph = model.graph
    for value, info in list(zip(inputs, graph.input))[1:]:
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), info.name))
    del graph.input[1:]
    path = tmp_path / "case.onnx"
    onnx.save(model, str(path))
    if case.name in REFUSED:
        code, _, err = run_cli("convert", path, "-o", tmp_path / "x.safetensors")
        assert code == 2 and "Traceback" not in err
        return
    layer = [l for l in load(str(path)).layers if l.kind in ("conv", "conv_transpose")][0]
    a = layer.attrs
    x = torch.from_numpy(np.asarray(inputs[0]))
    weight = torch.from_numpy(layer.tensors["weight"].load())
    bias = torch.from_numpy(layer.tensors["bias"].load()) if "bias" in layer.tensors else None
    rank = a["rank"]
    if layer.kind == "conv":
        x = F.pad(x, [p for pair in reversed(a["pads"]) for p in pair])
        got = [F.conv1d, F.conv2d, F.conv3d][rank - 1](x, weight, bias, stride=a["strides"], dilation=a["dilations"],
                                                       groups=a["groups"])
    else:
        full = [F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d][rank - 1](
            x, weight, bias, stride=a["strides"], dilation=a["dilations"], groups=a["groups"],
            output_padding=a["output_padding"])
        got = full[(slice(None), slice(None)) + tuple(slice(b, full.shape[2 + k] - e) for k, (b, e) in enumerate(a["pads"]))]
    np.testing.assert_allclose(got.numpy(), np.asarray(outputs[0]), rtol=1e-5, atol=1e-5)


def keras_from_onnx(run_cli, tmp_path, name: str, build, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Convert fixture ``name`` to the Keras target (legacy ``.h5`` or Keras 3 ``.weights.h5``), load it into
    ``build(keras)``, return (Keras output, onnxruntime's)."""
    import keras
    out = tmp_path / f"{name}{suffix}"
    code, _, err = run_cli("convert", fixture_path("onnx", f"{name}.onnx"), "-o", out, "--to", "keras")
    assert code == 0, err
    model, to_keras, from_keras = build(keras)
    model.load_weights(str(out))
    x = np.load(fixture_path("onnx", f"{name}.input.npy"))
    return from_keras(model.predict(to_keras(x), verbose=0)), np.load(fixture_path("onnx", f"{name}.output.npy"))


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def channels_first(y: np.ndarray) -> np.ndarray:
    return np.moveaxis(y, -1, 1)


def conv1d_model(keras):
    L = keras.layers
    inputs = keras.Input((19, 3))
    x = L.ZeroPadding1D(1)(inputs)
    x = L.Conv1D(5, 4, strides=2, activation="tanh")(x)
    return keras.Model(inputs, L.Conv1D(2, 3, dilation_rate=2)(x)), channels_last, channels_first


def conv3d_model(keras):
    inputs = keras.Input((5, 6, 4, 2))
    return (keras.Model(inputs, keras.layers.Conv3D(3, (2, 3, 2), activation="sigmoid")(inputs)),
            channels_last, channels_first)


def autopad_gemm_model(keras):
    """SAME_UPPER (stride 2) pads more at the end, SAME_LOWER more at the start: explicit padding layers."""
    L = keras.layers
    inputs = keras.Input((11, 13, 3))
    x = L.ZeroPadding2D(((0, 1), (1, 2)))(inputs)   # kernel (2, 4), stride 2: pads 1 (end) and 3 (1 start, 2 end)
    x = L.Conv2D(4, (2, 4), strides=2, use_bias=False)(x)
    x = L.ZeroPadding2D(((1, 1), (1, 0)))(x)        # kernel (3, 2), strides (2, 1), SAME_LOWER
    x = L.Conv2D(5, (3, 2), strides=(2, 1), use_bias=False, activation="relu")(x)
    x = L.Flatten()(x)
    x = L.Dense(6)(x)
    return keras.Model(inputs, L.Dense(3)(x)), channels_last, lambda y: y


def gru_model(keras, reset_after: bool):
    inputs = keras.Input((5, 2))
    gru = keras.layers.GRU(3, return_sequences=True, reset_after=reset_after)
    to_keras = lambda x: np.swapaxes(x, 0, 1)                    # (seq, batch, f) -> (batch, seq, f)
    from_keras = lambda y: np.swapaxes(y, 0, 1)[:, None]          # -> ONNX Y (seq, directions, batch, hidden)
    return keras.Model(inputs, gru(inputs)), to_keras, from_keras


@pytest.mark.parametrize("name, build", [
    ("torch_cnn_external", None), ("torch_conv1d", conv1d_model), ("torch_conv3d", conv3d_model),
    ("helper_autopad_gemm", autopad_gemm_model),
    ("gru_linear_before_reset", lambda keras: gru_model(keras, True)),
    ("gru_reset_before", lambda keras: gru_model(keras, False)),
])
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_onnx_fixture_ports_to_an_equivalent_keras3_model(run_cli, tmp_path, name, build, suffix):
    if build is None:  # same graph as torch_cnn, tensors in external data
        def build(keras):
            L = keras.layers
            inputs = keras.Input((17, 15, 3))
            x = L.Conv2D(4, (3, 2), activation="relu")(inputs)
            x = L.ZeroPadding2D(((1, 1), (0, 0)))(x)
            x = L.Conv2D(6, (2, 3), strides=2, groups=2)(x)
            x = L.Conv2D(6, 3, dilation_rate=2, groups=6)(x)
            x = L.Flatten()(L.MaxPooling2D(2)(x))
            return keras.Model(inputs, L.Dense(5)(x)), channels_last, lambda y: y
    got, expected = keras_from_onnx(run_cli, tmp_path, name, build, suffix)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_grouped_conv_transpose_is_refused_for_keras(run_cli, tmp_path):
    """Keras's Conv2DTranspose has no groups: a clear refusal, not a file Keras cannot load."""
    out = tmp_path / "t.h5"
    code, _, err = run_cli("convert", fixture_path("onnx", "torch_convtranspose.onnx"), "-o", out, "--to", "keras")
    assert code == 2 and "groups=2" in err and not out.exists()


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_bidirectional_onnx_lstm_ports_to_keras_bidirectional(run_cli, tmp_path, suffix):
    """ONNX LSTM gates i,o,f,c -> Keras i,f,c,o; B = [Wb, Rb] summed; reverse direction -> backward layer."""
    def build(keras):
        inputs = keras.Input((5, 2))
        rnn = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))
        to_keras = lambda x: np.swapaxes(x, 0, 1)
        # Keras (batch, seq, 2*hidden) -> ONNX Y (seq, directions, batch, hidden)
        from_keras = lambda y: y.reshape(y.shape[0], y.shape[1], 2, 3).transpose(1, 2, 0, 3)
        return keras.Model(inputs, rnn(inputs)), to_keras, from_keras
    got, expected = keras_from_onnx(run_cli, tmp_path, "lstm_bidirectional", build, suffix)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_learned_constant_in_mul_is_kept_not_dropped(run_cli, tmp_path):
    """A Mul scaling by a learned (3, 4) tensor that no layer holds: kept as stored under ``scale.value``
    (issue 17), exactly the source's values."""
    from onnx import TensorProto, helper, numpy_helper
    values = np.random.RandomState(3).uniform(-1, 1, (3, 4)).astype(np.float32)
    scale = numpy_helper.from_array(values, "scale")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"], name="scaled")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [scale])
    source = tmp_path / "mul.onnx"
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    code, _, err = run_cli("convert", source, "-o", tmp_path / "out.safetensors")
    assert code == 0, err
    from safetensors.numpy import load_file
    assert np.array_equal(load_file(str(tmp_path / "out.safetensors"))["scale.value"], values)
