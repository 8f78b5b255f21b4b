"""Keras 1.2.2 files made by the real Keras 1.2.2 / Theano 1.0.5 stack (fixtures/keras_theano/k1_*):
no backend recorded (weightport refuses to guess), dim_ordering 'th' and 'tf', Convolution1D's 4-D
kernels, Deconvolution2D, BatchNormalization's running_std (a variance), per-gate LSTM/GRU arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
from tests.conftest import fixture_path

TORCH_NAMES = ["k1_conv2d_th", "k1_conv2d_tf", "k1_conv2d_single_th", "k1_conv1d", "k1_batchnorm_dense",
               "k1_deconv"]


def path(name, suffix=".h5"):
    return fixture_path("keras_theano", f"{name}{suffix}")


@pytest.mark.parametrize("name", ["k1_conv2d_th", "k1_conv1d", "k1_deconv"])
def test_no_backend_means_no_guess(run_cli, tmp_path, name):
    code, _, err = run_cli("convert", path(name), "-o", tmp_path / "x.safetensors")
    assert code == 2 and "--assume-backend" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_keras1_file_reproduces_in_torch(run_cli, tmp_path, name):
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", path(name), "-o", out, "--assume-backend", "theano")
    assert code == 0, err
    model = load(path(name), assume_backend="theano")
    module = CanonicalModule(model).eval()
    module.load_state_dict(load_file(str(out)), strict=True)
    x = np.load(path(name, ".input.npy"))
    expected = np.load(path(name, ".output.npy"))
    with torch.no_grad():
        got = from_canonical_output(module(torch.from_numpy(to_canonical_input(x, model))).numpy(), model)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", ["k1_conv2d_th", "k1_deconv", "k1_conv1d"])
def test_wrong_backend_assumption_does_not_reproduce(run_cli, tmp_path, name):
    model = load(path(name), assume_backend="tensorflow")
    module = CanonicalModule(model).eval()
    from weightport.formats.torch.module import canonical_state_dict
    module.load_state_dict(canonical_state_dict(model), strict=True)
    x = np.load(path(name, ".input.npy"))
    with torch.no_grad():
        got = from_canonical_output(module(torch.from_numpy(to_canonical_input(x, model))).numpy(), model)
    assert np.abs(got - np.load(path(name, ".output.npy"))).max() > 1e-2


@pytest.mark.parametrize("name", ["k1_conv2d_th", "k1_conv2d_tf", "k1_deconv", "k1_conv1d"])
def test_detect_finds_theano_convolution(run_cli, name):
    code, out, err = run_cli("detect", path(name), "--input", path(name, ".input.npy"),
                             "--expected", path(name, ".output.npy"), "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["source_semantics"] == "convolution" and report["assume_backend"] == "theano"


def keras1_hard_sigmoid(x):
    """Keras 1/2's hard_sigmoid (clip(0.2 x + 0.5, 0, 1)); Keras 3's differs (relu6(x + 3) / 6)."""
    import keras
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def test_keras1_lstm_per_gate_arrays_port_to_keras3(run_cli, tmp_path):
    import keras
    out = tmp_path / "lstm.h5"
    code, _, err = run_cli("convert", path("k1_lstm"), "-o", out, "--to", "keras")
    assert code == 0, err
    inputs = keras.Input((6, 3))
    x = keras.layers.LSTM(4, return_sequences=True, recurrent_activation=keras1_hard_sigmoid)(inputs)
    x = keras.layers.LSTM(3, recurrent_activation=keras1_hard_sigmoid)(x)
    model = keras.Model(inputs, x)
    model.load_weights(str(out))
    np.testing.assert_allclose(model.predict(np.load(path("k1_lstm", ".input.npy")), verbose=0),
                               np.load(path("k1_lstm", ".output.npy")), rtol=1e-5, atol=1e-6)


def test_keras1_gru_per_gate_arrays_port_to_keras3(run_cli, tmp_path):
    import keras
    out = tmp_path / "gru.h5"
    code, _, err = run_cli("convert", path("k1_gru"), "-o", out, "--to", "keras")
    assert code == 0, err
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, keras.layers.GRU(4, reset_after=False, recurrent_activation=keras1_hard_sigmoid)(inputs))
    model.load_weights(str(out))
    np.testing.assert_allclose(model.predict(np.load(path("k1_gru", ".input.npy")), verbose=0),
                               np.load(path("k1_gru", ".output.npy")), rtol=1e-5, atol=1e-6)


# One rule for the torch target (weightport.core.plan.torch_rnn_problem): an LSTM/GRU that torch.nn.LSTM/GRU
# cannot compute (a GRU with reset_after=False, a hard_sigmoid gate: Keras 1's default) is refused, with the
# reason and the fix, rather than written as a state dict that loads and computes something else.
REFUSED_FOR_TORCH = [
    ("keras_theano", "k1_lstm.h5", "LSTM layer 'lstm' uses recurrent_activation='hard_sigmoid'"),
    ("keras_theano", "k1_gru.h5", "GRU layer 'gru' was trained with reset_after=False"),
    ("keras_theano", "k2_gru_reset_before.h5", "GRU layer 'gru' was trained with reset_after=False"),
    ("tf_keras2", "gru_reset_before.h5", "GRU layer 'gru_2' was trained with reset_after=False"),
    ("keras3", "rnn_hard_sigmoid.h5", "LSTM layer 'lstm' uses recurrent_activation='hard_sigmoid'"),
    ("onnx", "gru_reset_before.onnx", "GRU layer 'gru_reset_before' was trained with reset_after=False"),
]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("folder, name, says", REFUSED_FOR_TORCH)
def test_torch_target_refuses_every_rnn_torch_nn_cannot_compute(run_cli, tmp_path, folder, name, says, suffix):
    out = tmp_path / f"rnn{suffix}"
    code, _, err = run_cli("convert", fixture_path(folder, name), "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert says in err and "cannot compute" in err and "Convert to onnx" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_hard_sigmoid_lstm_and_reset_before_gru_are_carried_by_npz(run_cli, tmp_path):
    """The targets the refusal names carry such layers: npz with the attributes in its sidecar (ONNX computes
    them: tests/onnx/test_onnx_writer.py; Keras: the port tests above)."""
    for name in ("k1_lstm", "k1_gru"):
        out = tmp_path / f"{name}.npz"
        code, _, err = run_cli("convert", path(name), "-o", out)
        assert code == 0, err
        layers = {layer["name"]: layer["attrs"] for layer in json.loads((tmp_path / f"{name}.npz.json").read_text())
                  ["graph"]["layers"]}
        rnn = layers["lstm" if name == "k1_lstm" else "gru"]
        assert rnn["recurrent_activation"] == "hard_sigmoid"
        assert rnn["reset_after"] is (name == "k1_lstm")  # Keras 1 GRUs apply the reset gate first
