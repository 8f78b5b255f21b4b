"""Keras 2 CuDNNLSTM / CuDNNGRU weights (biases doubled, per-gate matrices as cuDNN reads them, GRU
reset-after). The files hold seeded random arrays in the cuDNN layout; the truth is tf.keras 2 itself
(``tf_keras``): its legacy loader converts such weights into ``LSTM``/``GRU(reset_after=True)``
(``_convert_rnn_weights``) and runs them. Our conversions run in torch.nn.LSTM/GRU and in Keras 3."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import require

pytestmark = pytest.mark.requires("tf_keras", "torch", "keras")

INPUTS, UNITS, STEPS = 5, 3, 7
GATES = {"lstm": 4, "gru": 3}


def cudnn_file(path, kind: str, name: str | None = None, seed: int = 7) -> dict[str, np.ndarray]:
    """A Keras 2 ``save_weights`` file of one CuDNN RNN layer with seeded random weights (not square)."""
    rng = np.random.default_rng(seed)
    count = GATES[kind]
    arrays = {"kernel": rng.standard_normal((INPUTS, count * UNITS)),
              "recurrent_kernel": rng.standard_normal((UNITS, count * UNITS)),
              "bias": rng.standard_normal(2 * count * UNITS)}
    name = name or f"cu_dnn{kind}_1"
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"2.2.4"
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["layer_names"] = np.array([name.encode()])
        group = handle.create_group(name)
        group.attrs["weight_names"] = np.array([f"{name}/{key}:0".encode() for key in arrays])
        for key, value in arrays.items():
            group.create_dataset(f"{name}/{key}:0", data=value.astype("float32"))
    return arrays


def inputs() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, STEPS, INPUTS)).astype("float32")


def tf_keras_output(path, kind: str) -> np.ndarray:
    """What tf.keras 2 computes with the cuDNN weights, loaded by its own legacy converter."""
    tf_keras = require("tf_keras")
    layer = (tf_keras.layers.LSTM(UNITS, recurrent_activation="sigmoid", return_sequences=True) if kind == "lstm"
             else tf_keras.layers.GRU(UNITS, recurrent_activation="sigmoid", reset_after=True,
                                      return_sequences=True))
    model = tf_keras.Sequential([tf_keras.Input((STEPS, INPUTS)), layer])
    model.load_weights(str(path))
    return model.predict(inputs(), verbose=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_weights_run_in_torch_as_tf_keras_runs_them(run_cli, tmp_path, kind):
    torch = require("torch")
    source = tmp_path / f"{kind}.h5"
    cudnn_file(source, kind)
    expected = tf_keras_output(source, kind)
    out = tmp_path / f"{kind}.safetensors"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "torch")
    assert code == 0, err
    state = {key.split(".", 1)[1]: torch.from_numpy(value) for key, value in load_file(str(out)).items()}
    rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(INPUTS, UNITS, batch_first=True)
    rnn.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = rnn(torch.from_numpy(inputs()))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_weights_load_into_keras3_lstm_gru(run_cli, tmp_path, kind):
    keras = require("keras")
    source = tmp_path / f"{kind}.h5"
    cudnn_file(source, kind)
    expected = tf_keras_output(source, kind)
    out = tmp_path / f"{kind}.weights.h5"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "keras")
    assert code == 0, err
    layer = (keras.layers.LSTM(UNITS, return_sequences=True) if kind == "lstm"
             else keras.layers.GRU(UNITS, reset_after=True, return_sequences=True))
    model = keras.Sequential([keras.Input((STEPS, INPUTS)), layer])
    model.load_weights(str(out))
    np.testing.assert_allclose(np.asarray(model(inputs())), expected, rtol=1e-5, atol=1e-5)


def test_cudnn_layer_is_recognised_by_its_bias_under_any_name(run_cli, tmp_path):
    """textgenrnn names its CuDNNLSTM ``rnn_1``: the doubled 1-D bias says cuDNN, not the name."""
    source = tmp_path / "named.h5"
    cudnn_file(source, "lstm", name="rnn_1")
    code, out, err = run_cli("inspect", source)
    assert code == 0, err
    assert "cudnn" in out and "bias_hh_l0: (12,)" in out


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_validate_checks_cudnn_layers_and_catches_a_plain_transpose(run_cli, tmp_path, kind):
    """validate's layer check runs Keras on the arrays put in LSTM/GRU form by Keras 2's own conversion;
    reading the cuDNN kernel as a plain Keras kernel (transposed, not re-read per gate) fails it."""
    from safetensors.numpy import save_file
    source = tmp_path / f"{kind}.h5"
    arrays = cudnn_file(source, kind)
    out = tmp_path / "ok.safetensors"
    assert run_cli("convert", source, "-o", out)[0] == 0
    code, report, err = run_cli("validate", source, out)
    assert code == 0 and f"PASS layer cu_dnn{kind}_1" in report, report + err
    state = load_file(str(out))
    key = f"cu_dnn{kind}_1.weight_ih_l0"
    plain = arrays["kernel"].T.astype("float32")  # the non-cuDNN reading: rows = gates*units, no re-read
    if kind == "gru":  # and the GRU's gates put in torch's order, as a plain GRU kernel would be
        plain = np.concatenate([plain[UNITS:2 * UNITS], plain[:UNITS], plain[2 * UNITS:]])
    state[key] = np.ascontiguousarray(plain)
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong))
    code, report, err = run_cli("validate", source, wrong)
    assert code == 1 and f"FAIL layer cu_dnn{kind}_1" in report, report + err
