"""tf.keras 2.x files (made by the real tf_keras package, fixtures/tf_keras2): Keras 2 weight names
(``conv2d/kernel:0``), nested models, Bidirectional, TimeDistributed, Embedding, causal Conv1D, PReLU,
GRU with reset_after=False. Truth: the outputs tf.keras recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
from tests.conftest import fixture_path

TORCH_FIXTURES = ["cnn_sequential", "rnn_stack", "embedding_conv1d", "nested_residual", "hard_sigmoid_dense"]


def run_in_torch(model, state, name):
    module = CanonicalModule(model).eval()
    module.load_state_dict(state, strict=True)
    x = np.load(fixture_path("tf_keras2", f"{name}.input.npy"))
    with torch.no_grad():
        got = module(torch.from_numpy(to_canonical_input(x, model))).numpy()
    return from_canonical_output(got, model)


@pytest.mark.parametrize("name", TORCH_FIXTURES)
def test_tf_keras2_fixture_reproduces_in_torch(run_cli, tmp_path, name):
    source = fixture_path("tf_keras2", f"{name}.h5")
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    expected = np.load(fixture_path("tf_keras2", f"{name}.output.npy"))
    got = run_in_torch(load(source), load_file(str(out)), name)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_inspect_reports_version_backend_and_rule(run_cli):
    code, out, err = run_cli("inspect", fixture_path("tf_keras2", "cnn_sequential.h5"))
    assert code == 0, err
    assert "version 2.21.0" in out and "backend tensorflow" in out
    assert "rule: keras-tensorflow-correlation" in out


def test_bidirectional_keys_follow_torch_naming(run_cli, tmp_path):
    out = tmp_path / "rnn.safetensors"
    assert run_cli("convert", fixture_path("tf_keras2", "rnn_stack.h5"), "-o", out)[0] == 0
    keys = set(load_file(str(out)))
    assert {"bidirectional.weight_ih_l0", "bidirectional.weight_ih_l0_reverse",
            "bidirectional.bias_hh_l0_reverse", "time_distributed.weight"} <= keys


def test_gru_reset_after_false_is_refused_for_torch_with_the_reason(run_cli, tmp_path):
    out = tmp_path / "gru.safetensors"
    code, _, err = run_cli("convert", fixture_path("tf_keras2", "gru_reset_before.h5"), "-o", out)
    assert code == 2 and "reset_after=False" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["cnn_sequential", "embedding_conv1d", "gru_reset_before"])
def test_save_weights_file_matches_model_file_tensors(run_cli, tmp_path, name):
    full = load(fixture_path("tf_keras2", f"{name}.h5"))
    weights_only = load(fixture_path("tf_keras2", f"{name}.save_weights.h5"))
    assert any("no model config" in w for w in weights_only.warnings)
    full_tensors = {key: (layer.kind, t) for key, layer, t in full.state_keys()}
    only = {key: t for key, _, t in weights_only.state_keys()}
    assert set(only) == set(full_tensors)
    for key, (kind, tensor) in full_tensors.items():
        if kind == "dense" and key.endswith(".weight"):
            continue  # rows after a Flatten need the architecture
        np.testing.assert_array_equal(only[key].load(), tensor.load())


def test_weights_only_nested_model_is_refused_clearly(run_cli, tmp_path):
    code, _, err = run_cli("convert", fixture_path("tf_keras2", "nested_residual.save_weights.h5"),
                           "-o", tmp_path / "x.safetensors")
    assert code == 2 and "model.save" in err and "Traceback" not in err


def test_gru_reset_after_false_ports_to_a_keras3_model(run_cli, tmp_path):
    """What torch cannot run, Keras 3 can: the keras target reproduces tf.keras's recorded output."""
    import keras
    out = tmp_path / "gru.h5"
    code, _, err = run_cli("convert", fixture_path("tf_keras2", "gru_reset_before.h5"), "-o", out, "--to", "keras")
    assert code == 0, err
    inputs = keras.Input((6, 3))
    x = keras.layers.GRU(4, reset_after=False, return_sequences=True)(inputs)
    x = keras.layers.LSTM(2, go_backwards=True)(x)
    model = keras.Model(inputs, x)
    model.load_weights(str(out))
    x = np.load(fixture_path("tf_keras2", "gru_reset_before.input.npy"))
    expected = np.load(fixture_path("tf_keras2", "gru_reset_before.output.npy"))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_causal_conv1d_keeps_the_sequence_length_as_tf_keras_does():
    """A Conv1D fed by an Embedding reads the (time, features) sequence as (features, time); 'causal' pads
    (kernel - 1) * dilation steps before, so the length stays: shapes compared with tf.keras's own model."""
    from tests.conftest import require
    tf_keras = require("tf_keras")
    path = fixture_path("tf_keras2", "embedding_conv1d.h5")
    theirs = tf_keras.models.load_model(path, compile=False)
    ours = {layer.name: layer.output_shape for layer in load(path).layers}
    conv = theirs.get_layer("conv1d")
    assert conv.padding == "causal"
    steps, filters = conv.output.shape[1:]
    assert ours["conv1d"] == (filters, steps) and steps == theirs.input.shape[1]
