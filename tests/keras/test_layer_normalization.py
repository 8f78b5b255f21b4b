"""Keras LayerNormalization (gamma, beta, axis, epsilon, center/scale): read from Keras 3 and tf.keras files,
run in the torch module, written to torch, Keras (legacy .h5 and Keras 3 .weights.h5) and traced ONNX, refused
in one line by the targets that cannot hold it.  Truth: the outputs Keras 3 and tf.keras computed for models
built here with seeded random, non-symmetric weights (gamma and beta differ per feature, so a swap or a
reversal shows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tests.conftest import require

pytestmark = pytest.mark.requires("keras", "torch")


def randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])


def keras3_model(keras):
    """LayerNormalization over a map's channels, over a sequence's time axis (axis=1), and without beta."""
    inp = keras.Input((9, 8, 3))
    x = keras.layers.Conv2D(5, (3, 2))(inp)
    x = keras.layers.LayerNormalization(epsilon=1e-3, name="ln_map")(x)
    x = keras.layers.Conv2D(4, (2, 3))(x)
    x = keras.layers.Reshape((30, 4))(x)
    x = keras.layers.LayerNormalization(axis=1, name="ln_time")(x)
    x = keras.layers.LSTM(6, return_sequences=True)(x)
    x = keras.layers.LayerNormalization(center=False, epsilon=1e-4, name="ln_features")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x))


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory):
    keras = require("keras")
    folder = tmp_path_factory.mktemp("layernorm")
    model = keras3_model(keras)
    randomize(model, 11)
    x = np.random.default_rng(12).standard_normal((2, 9, 8, 3)).astype("float32")
    model.save(folder / "ln.keras")
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", model.predict(x, verbose=0))
    return folder, x, model.predict(x, verbose=0)


def validate(run_cli, folder, source, converted):
    code, out, err = run_cli("validate", source, converted, "--input", folder / "x.npy", "--expected",
                             folder / "y.npy", "--json")
    return code, json.loads(out) if out.strip() else {}, err


def by_layer(report):
    return {c["layer"]: c for c in report["checks"] if c["check"] == "layer"}


def whole(report):
    return next(c for c in report["checks"] if c["check"] == "whole-model")


def test_keras3_layernorm_reproduces_in_torch_and_a_tampered_gamma_fails_naming_the_layer(run_cli, keras3_files):
    folder, _, _ = keras3_files
    out = folder / "ln.safetensors"
    code, _, err = run_cli("convert", folder / "ln.keras", "-o", out)
    assert code == 0, err
    code, report, err = validate(run_cli, folder, folder / "ln.keras", out)
    assert code == 0 and report["status"] == "pass", (report, err)
    layers = by_layer(report)
    assert all(layers[name]["status"] == "pass" for name in ("ln_map", "ln_time", "ln_features")), layers
    assert whole(report)["status"] == "pass"

    tensors = load_file(str(out))
    with safe_open(str(out), "np") as handle:
        metadata = dict(handle.metadata())
    assert tensors["ln_map.weight"].shape == (5,) and tensors["ln_time.weight"].shape == (30,)
    np.testing.assert_array_equal(tensors["ln_features.bias"], np.zeros(6, np.float32))  # center=False: no beta
    tensors["ln_map.weight"] = tensors["ln_map.weight"][::-1].copy()
    save_file(tensors, str(folder / "bad.safetensors"), metadata=metadata)
    code, report, _ = validate(run_cli, folder, folder / "ln.keras", folder / "bad.safetensors")
    assert code == 1 and report["status"] == "fail"
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["layer"] for c in failed if c["check"] == "layer"] == ["ln_map"], failed
    assert whole(report)["status"] == "fail"


def test_gamma_and_beta_swapped_is_named(run_cli, keras3_files):
    folder, _, _ = keras3_files
    out = folder / "ln_swap.safetensors"
    assert run_cli("convert", folder / "ln.keras", "-o", out)[0] == 0
    tensors = load_file(str(out))
    with safe_open(str(out), "np") as handle:
        metadata = dict(handle.metadata())
    tensors["ln_time.weight"], tensors["ln_time.bias"] = tensors["ln_time.bias"], tensors["ln_time.weight"]
    save_file(tensors, str(out), metadata=metadata)
    _, report, _ = validate(run_cli, folder, folder / "ln.keras", out)
    check = by_layer(report)["ln_time"]
    assert check["status"] == "fail" and check["likely_cause"] == "gamma and beta swapped", check


@pytest.mark.parametrize("name", ["ln_out.h5", "ln_out.weights.h5", "ln_out.onnx", "ln_out.pt"])
def test_keras_onnx_and_pt_targets_validate(run_cli, keras3_files, name):
    folder, _, _ = keras3_files
    code, _, err = run_cli("convert", folder / "ln.keras", "-o", folder / name, "--force")
    assert code == 0, err
    code, report, err = validate(run_cli, folder, folder / "ln.keras", folder / name)
    assert code == 0 and report["status"] == "pass" and whole(report)["status"] == "pass", (report, err)


def test_keras3_load_weights_reproduces(run_cli, keras3_files):
    """Keras 3's own load_weights of the written .weights.h5 into the same architecture."""
    keras = require("keras")
    folder, x, expected = keras3_files
    assert run_cli("convert", folder / "ln.keras", "-o", folder / "load.weights.h5", "--force")[0] == 0
    fresh = keras3_model(keras)
    fresh.load_weights(str(folder / "load.weights.h5"))
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target,name,words", [("theano", "ln.pkl", "no Lasagne array layout"),
                                               ("java", "ln_java", "kind 'layernorm' is not supported")])
def test_targets_that_cannot_hold_it_refuse_in_one_line(run_cli, keras3_files, target, name, words):
    folder, _, _ = keras3_files
    extra = ["--emit-forward"] if target == "java" else []
    code, _, err = run_cli("convert", folder / "ln.keras", "-o", folder / name, "--to", target, *extra)
    assert code == 2 and words in err and "ln_map" in err and len(err.strip().splitlines()) == 1, err
    assert not (folder / name).exists()


def test_tf_keras_layernorm_reproduces_in_torch(run_cli, tmp_path):
    tf_keras = require("tf_keras")
    inp = tf_keras.Input((6, 4))
    x = tf_keras.layers.Dense(5)(inp)
    x = tf_keras.layers.LayerNormalization(epsilon=1e-2, name="ln")(x)
    x = tf_keras.layers.GRU(3)(x)
    model = tf_keras.Model(inp, tf_keras.layers.LayerNormalization(scale=False, name="ln_out")(x))
    randomize(model, 21)
    x = np.random.default_rng(22).standard_normal((3, 6, 4)).astype("float32")
    model.save(tmp_path / "tfk.h5")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    out = tmp_path / "tfk.safetensors"
    code, _, err = run_cli("convert", tmp_path / "tfk.h5", "-o", out)
    assert code == 0, err
    code, report, err = validate(run_cli, tmp_path, tmp_path / "tfk.h5", out)
    assert code == 0 and report["status"] == "pass", (report, err)
    assert by_layer(report)["ln"]["status"] == "pass" and by_layer(report)["ln_out"]["status"] == "pass"
    np.testing.assert_array_equal(load_file(str(out))["ln_out.weight"], np.ones(3, np.float32))  # scale=False
