"""The ONNX target, checked by onnxruntime against outputs the source frameworks recorded.

* Without a template, the canonical graph is traced to ONNX: Keras 3 and Theano fixtures must
  reproduce Keras's and Theano's own outputs in onnxruntime (Theano convolves, so its kernels
  must arrive flipped).
* With ``--template``, the template's weights are replaced: the template is first scrambled
  (every initializer and Constant weight random), so only a correct write-back of every tensor
  (Gemm transB/alpha/beta, LSTM/GRU gate order, stacked directions, ``B = [Wb, Rb]``) makes
  onnxruntime reproduce the recorded output, and ONNX -> safetensors -> ONNX must give back
  bit-identical weights.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import fixture_path, optional_module

onnx = optional_module("onnx")
ort = optional_module("onnxruntime")
numpy_helper = optional_module("onnx.numpy_helper")
pytestmark = pytest.mark.requires("onnx", "onnxruntime", "torch")  # per test: skipped, or failed under CI

KERAS3 = ["cnn_flatten_dense", "channels_first_cnn", "conv1d_rnn", "conv3d_grouped", "functional_residual",
          "functional_residual_flatten", "conv2d_transpose_single"]
ONNX = ["torch_cnn", "torch_cnn_external", "torch_conv1d", "torch_conv3d", "torch_convtranspose",
        "helper_autopad_gemm", "lstm_bidirectional", "gru_linear_before_reset"]


def run_onnx(path: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


def channels_first(x: np.ndarray, source_shape_last: bool) -> np.ndarray:
    return np.moveaxis(x, -1, 1) if source_shape_last and x.ndim >= 3 else x


@pytest.mark.parametrize("name", KERAS3)
def test_keras3_model_as_whole_onnx_graph_reproduces_keras(run_cli, tmp_path, name):
    out = str(tmp_path / f"{name}.onnx")
    code, _, err = run_cli("convert", fixture_path("keras3", f"{name}.h5"), "-o", out)
    assert code == 0, err
    onnx.checker.check_model(out)
    x = np.load(fixture_path("keras3", f"{name}.input.npy"))
    expected = np.load(fixture_path("keras3", f"{name}.output.npy"))
    channels_last = name != "channels_first_cnn"  # Keras maps and sequences are channels-last; ONNX takes NC...
    got = run_onnx(out, channels_first(x, channels_last))
    if channels_last and got.ndim >= 3:  # a feature map out (conv2d_transpose_single): NC... back to N...C
        got = np.moveaxis(got, 1, -1)
    assert_close(got, expected)


@pytest.mark.parametrize("name", ["theano_cnn", "theano_grouped"])
def test_theano_pickle_as_onnx_graph_reproduces_theano(run_cli, tmp_path, name):
    """Theano's conv2d convolves: the written ONNX Conv (a correlation) needs flipped kernels."""
    out = str(tmp_path / f"{name}.onnx")
    code, _, err = run_cli("convert", fixture_path("theano", f"{name}.shared.p4.pkl"), "-o", out)
    assert code == 0, err
    x = np.load(fixture_path("theano", f"{name}.input.npy"))
    assert_close(run_onnx(out, x), np.load(fixture_path("theano", f"{name}.output.npy")))


def weights_of(path: str) -> dict[str, np.ndarray]:
    """Every initializer and Constant-node tensor, by name (external data loaded)."""
    model = onnx.load(path)
    found = {t.name: numpy_helper.to_array(t, base_dir=os.path.dirname(path)) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def scrambled_copy(path: str, out: str) -> None:
    """``path`` with every float weight replaced by seeded random values of the same shape, saved inline."""
    model = onnx.load(path)
    rng = np.random.default_rng(11)
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    for tensor in tensors:
        array = numpy_helper.to_array(tensor, base_dir=os.path.dirname(path))
        if array.dtype.kind == "f":
            tensor.CopyFrom(numpy_helper.from_array(rng.standard_normal(array.shape).astype(array.dtype), tensor.name))
    onnx.save(model, out)


@pytest.mark.parametrize("name", ONNX)
def test_template_weights_are_written_back_exactly(run_cli, tmp_path, name):
    source = fixture_path("onnx", f"{name}.onnx")
    template = str(tmp_path / "template.onnx")
    scrambled_copy(source, template)
    middle, back = str(tmp_path / "middle.safetensors"), str(tmp_path / "back.onnx")
    assert run_cli("convert", source, "-o", middle)[0] == 0
    code, _, err = run_cli("convert", middle, "-o", back, "--to", "onnx", "--template", template)
    assert code == 0, err
    x = np.load(fixture_path("onnx", f"{name}.input.npy"))
    assert_close(run_onnx(back, x), np.load(fixture_path("onnx", f"{name}.output.npy")))
    original, returned = weights_of(source), weights_of(back)
    for key, array in original.items():
        if array.dtype.kind == "f":
            assert returned[key].tobytes() == array.tobytes(), key  # A -> B -> A is bit-identical


def test_template_of_another_architecture_is_refused(run_cli, tmp_path):
    middle = str(tmp_path / "m.safetensors")
    assert run_cli("convert", fixture_path("onnx", "torch_conv1d.onnx"), "-o", middle)[0] == 0
    out = str(tmp_path / "x.onnx")
    code, _, err = run_cli("convert", middle, "-o", out, "--to", "onnx",
                           "--template", fixture_path("onnx", "torch_cnn.onnx"))
    assert code == 2 and "template" in err and "\n" not in err.strip()
    assert not os.path.exists(out)


def test_template_only_with_the_onnx_target(run_cli, tmp_path):
    code, _, err = run_cli("convert", fixture_path("keras3", "cnn_flatten_dense.h5"), "-o",
                           str(tmp_path / "a.safetensors"), "--template", fixture_path("onnx", "torch_cnn.onnx"))
    assert code == 2 and "--template only applies" in err


# LSTM/GRU layers torch.nn cannot compute (GRU reset_after=False, hard_sigmoid gates) are written, without a
# template, as ONNX LSTM/GRU nodes of their own: the recorded outputs of Keras 1 and 2 on Theano, tf.keras 2
# and Keras 3 must come out of onnxruntime.  Keras sequences are (batch, time, features), as the graph takes them.
DIRECT_RNN = [("keras_theano", "k1_lstm"), ("keras_theano", "k1_gru"), ("keras_theano", "k2_gru_reset_before"),
              ("tf_keras2", "gru_reset_before"), ("keras3", "rnn_hard_sigmoid")]


@pytest.mark.parametrize("folder, name", DIRECT_RNN)
def test_rnn_torch_cannot_compute_is_an_onnx_node_reproducing_the_source(run_cli, tmp_path, folder, name):
    out = str(tmp_path / f"{name}.onnx")
    code, _, err = run_cli("convert", fixture_path(folder, f"{name}.h5"), "-o", out)
    assert code == 0, err
    onnx.checker.check_model(out, full_check=True)
    x = np.load(fixture_path(folder, f"{name}.input.npy"))
    assert_close(run_onnx(out, x), np.load(fixture_path(folder, f"{name}.output.npy")))


def rnn_nodes(path: str) -> list:
    return [node for node in onnx.load(path).graph.node if node.op_type in ("LSTM", "GRU")]


@pytest.mark.parametrize("folder, name, alpha", [("keras_theano", "k1_lstm", 0.2),
                                                  ("keras3", "rnn_hard_sigmoid", 1 / 6)])
def test_hard_sigmoid_is_the_source_frameworks_own(run_cli, tmp_path, folder, name, alpha):
    """Keras 1/2: clip(0.2 x + 0.5, 0, 1) (Theano's T.nnet.hard_sigmoid, the TF backend); Keras 3: relu6(x + 3) / 6
    (keras/src/backend/tensorflow/nn.py).  The outputs above prove it; here is where it is written."""
    out = str(tmp_path / "rnn.onnx")
    assert run_cli("convert", fixture_path(folder, f"{name}.h5"), "-o", out)[0] == 0
    for node in rnn_nodes(out):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["activations"][0] == b"HardSigmoid", attrs
        np.testing.assert_allclose(attrs["activation_alpha"][0], alpha, rtol=1e-6)
        np.testing.assert_allclose(attrs["activation_beta"][0], 0.5, rtol=1e-6)


def test_onnx_gru_reset_before_is_written_back_without_a_template(run_cli, tmp_path):
    """fixtures/onnx/gru_reset_before.onnx (linear_before_reset=0) -> ONNX: onnxruntime's recorded output again,
    and W, R, B bit-identical to the file's own (gate order z, r, h and B = [Wb, Rb] restored exactly)."""
    source = fixture_path("onnx", "gru_reset_before.onnx")
    out = str(tmp_path / "gru.onnx")
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    x = np.load(fixture_path("onnx", "gru_reset_before.input.npy"))          # (seq, batch, features)
    expected = np.load(fixture_path("onnx", "gru_reset_before.output.npy"))  # (seq, directions, batch, hidden)
    got = run_onnx(out, np.ascontiguousarray(x.transpose(1, 0, 2)))         # the written graph is batch-first
    assert got.shape == (2, 5, 3)                                            # (batch, seq, hidden), one direction
    assert_close(got.transpose(1, 0, 2)[:, np.newaxis], expected)
    node, = rnn_nodes(out)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["linear_before_reset"] == 0
    original, returned = weights_of(source), weights_of(out)
    for slot, name in zip(("W", "R", "B"), node.input[1:4]):
        assert returned[name].tobytes() == original[slot].tobytes(), slot


def test_keras3_bidirectional_backwards_rnns_torch_cannot_compute_reproduce_keras(run_cli, tmp_path):
    """Built here by Keras 3: a Bidirectional hard_sigmoid LSTM (sequences), a hard_sigmoid GRU with
    reset_after=True (its two biases: B = [Wb, Rb] in the right halves matters), a go_backwards GRU with
    reset_after=False and a relu cell, a Bidirectional reset_after=False hard_sigmoid GRU (last output);
    seeded asymmetric weights.  Keras's predict is the truth."""
    import keras
    layers = keras.layers
    inputs = keras.Input((6, 3))
    x = layers.Bidirectional(layers.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True))(inputs)
    x = layers.GRU(5, recurrent_activation="hard_sigmoid", reset_after=True, return_sequences=True)(x)
    x = layers.GRU(3, reset_after=False, go_backwards=True, activation="relu", return_sequences=True)(x)
    x = layers.Bidirectional(layers.GRU(2, reset_after=False, recurrent_activation="hard_sigmoid"))(x)
    model = keras.Model(inputs, x)
    rng = np.random.RandomState(5)
    model.set_weights([rng.uniform(-1, 1, w.shape).astype("float32") for w in model.get_weights()])
    source, out = str(tmp_path / "rnn.h5"), str(tmp_path / "rnn.onnx")
    model.save(source)
    x = rng.uniform(-1, 1, (2, 6, 3)).astype("float32")
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    assert_close(run_onnx(out, x), model.predict(x, verbose=0))
    assert [node.op_type for node in rnn_nodes(out)] == ["LSTM", "GRU", "GRU", "GRU"]
