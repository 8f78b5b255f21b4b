"""Weights-only Keras files (``save_weights``, no model config) and models that record no input shape:
kinds inferred from weight names and shapes where they decide it, ``--layer-kinds`` where they do not,
``--input-shape`` for a Flatten whose map shape is unknown. Truth: tf.keras 2 / Keras running the same
weights."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import fixture_path, require

pytestmark = pytest.mark.requires("tf_keras", "torch")


def transposed_weights_file(path, filters: int):
    """tf.keras 2 ``save_weights`` of one Conv2DTranspose named ``mystery`` on a 4-channel map."""
    tf_keras = require("tf_keras")
    tf_keras.utils.set_random_seed(3)
    model = tf_keras.Sequential([tf_keras.Input((5, 6, 4)),
                                 tf_keras.layers.Conv2DTranspose(filters, (3, 2), strides=2, name="mystery",
                                                                 bias_initializer="random_normal")])
    model.save_weights(str(path))
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 4)).astype("float32")
    return x, model.predict(x, verbose=0)


def torch_transposed(state: dict, filters: int, x: np.ndarray) -> np.ndarray:
    torch = require("torch")
    layer = torch.nn.ConvTranspose2d(4, filters, (3, 2), stride=2)
    layer.load_state_dict({"weight": torch.from_numpy(state["mystery.weight"]),
                           "bias": torch.from_numpy(state["mystery.bias"])})
    with torch.no_grad():
        y = layer(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return y.numpy()


def test_shapes_decide_a_transposed_convolution(run_cli, tmp_path):
    source = tmp_path / "w.h5"
    x, expected = transposed_weights_file(source, filters=6)  # kernel (3, 2, 6, 4), bias (6,): transposed
    out = tmp_path / "w.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    np.testing.assert_allclose(torch_transposed(load_file(str(out)), 6, x), expected, rtol=1e-5, atol=1e-5)


def test_undecided_kind_is_refused_then_taken_from_layer_kinds(run_cli, tmp_path):
    source = tmp_path / "w.h5"
    x, expected = transposed_weights_file(source, filters=4)  # kernel (3, 2, 4, 4): Conv2D or transposed
    out = tmp_path / "w.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 2 and "'mystery'" in err and "--layer-kinds" in err and not out.exists()
    kinds = tmp_path / "kinds.json"
    kinds.write_text(json.dumps({"mistery": "Conv2DTranspose"}))
    code, _, err = run_cli("convert", source, "-o", out, "--layer-kinds", kinds)
    assert code == 2 and "mistery" in err and not out.exists()
    kinds.write_text(json.dumps({"mystery": "Conv2DTranspose"}))
    code, _, err = run_cli("convert", source, "-o", out, "--layer-kinds", kinds)
    assert code == 0, err
    np.testing.assert_allclose(torch_transposed(load_file(str(out)), 4, x), expected, rtol=1e-5, atol=1e-5)


def test_input_shape_gives_the_flatten_its_map(run_cli, tmp_path):
    """A model config without any input shape: the Dense rows after the Flatten cannot be permuted until
    --input-shape gives the map; then validate reproduces Keras's recorded output."""
    fixture = fixture_path("keras3", "cnn_flatten_dense")
    source = tmp_path / "noshape.h5"
    shutil.copy(fixture + ".h5", source)
    with h5py.File(source, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        for layer in config["config"]["layers"]:
            for key in ("batch_shape", "batch_input_shape", "input_shape"):
                layer["config"].pop(key, None)
        handle.attrs["model_config"] = json.dumps(config)
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0 and "--input-shape" in err
    shape = ",".join(str(n) for n in np.load(fixture + ".input.npy").shape[1:])
    code, _, err = run_cli("convert", source, "-o", out, "--input-shape", shape, "--force")
    assert code == 0 and "Flatten" not in err, err
    code, report, err = run_cli("validate", fixture + ".h5", out, "--input", fixture + ".input.npy",
                                "--expected", fixture + ".output.npy")
    assert code == 0 and "PASS whole model" in report, report + err


def test_keras_to_keras_without_input_shape_warns_once(run_cli, tmp_path):
    source = tmp_path / "noshape.h5"
    shutil.copy(fixture_path("keras3", "cnn_flatten_dense.h5"), source)
    with h5py.File(source, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        for layer in config["config"]["layers"]:
            layer["config"].pop("batch_shape", None)
        handle.attrs["model_config"] = json.dumps(config)
    code, _, err = run_cli("convert", source, "-o", tmp_path / "k.h5", "--to", "keras")
    assert code == 0, err
    assert len([line for line in err.splitlines() if "Flatten" in line]) == 1
