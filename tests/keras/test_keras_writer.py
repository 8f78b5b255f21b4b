"""Keras target: weights written by weightport (legacy .h5 and Keras 3 .weights.h5) load into a real Keras 3
model with load_weights and reproduce the outputs Keras recorded; Keras -> torch -> Keras returns bit-identical
arrays, and the .weights.h5 holds the very datasets Keras's own save_weights wrote."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import scipy.signal

from tests.conftest import fixture_path

FIXTURES = ["cnn_flatten_dense", "functional_residual", "conv1d_rnn", "conv3d_grouped", "functional_residual_flatten",
            "conv2d_transpose_single"]


def weights_by_layer(path: str) -> dict[str, list[np.ndarray]]:
    """Every layer's arrays in Keras weight order, read with plain h5py."""
    out = {}
    with h5py.File(path) as f:
        root = f["model_weights"] if "model_weights" in f else f
        for name in root.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            names = [n.decode() if isinstance(n, bytes) else n for n in root[name].attrs["weight_names"]]
            out[name] = [root[name][n][()] for n in names]
    return out


def keras3_datasets(path: str) -> dict[str, np.ndarray]:
    """Every dataset of a Keras 3 .weights.h5 by its HDF5 path (groups of weightless layers hold none)."""
    found = {}
    with h5py.File(path) as f:
        f.visititems(lambda key, item: found.update({key: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_keras_to_torch_to_keras_loads_and_reproduces(run_cli, tmp_path, name, suffix):
    middle, back = tmp_path / f"{name}.safetensors", tmp_path / f"{name}{suffix}"
    assert run_cli("convert", fixture_path("keras3", f"{name}.h5"), "-o", middle)[0] == 0
    code, _, err = run_cli("convert", middle, "-o", back, "--to", "keras")
    assert code == 0, err
    model = keras.models.load_model(fixture_path("keras3", f"{name}.keras"))
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    model.load_weights(str(back))
    x = np.load(fixture_path("keras3", f"{name}.input.npy"))
    expected = np.load(fixture_path("keras3", f"{name}.output.npy"))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    if suffix == ".weights.h5":  # the same datasets, at the same paths, as Keras's own save_weights
        original, returned = keras3_datasets(fixture_path("keras3", f"{name}.weights.h5")), keras3_datasets(str(back))
        assert sorted(original) == sorted(returned)
        for key, array in original.items():
            assert array.dtype == returned[key].dtype and np.array_equal(array, returned[key]), key
        return
    original, returned = weights_by_layer(fixture_path("keras3", f"{name}.h5")), weights_by_layer(str(back))
    for layer, arrays in original.items():
        assert len(arrays) == len(returned[layer]), layer
        for a, b in zip(arrays, returned[layer]):
            assert a.dtype == b.dtype and np.array_equal(a, b), layer


def test_target_semantics_convolution_flips_for_a_convolving_runtime(run_cli, tmp_path):
    """A kernel written with --target-semantics convolution, used by scipy.signal.convolve2d,
    reproduces what tf.nn.conv2d computes with the original Keras kernel."""
    import tensorflow as tf
    source = fixture_path("keras3", "cnn_flatten_dense.h5")
    out = tmp_path / "theano_style.h5"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "keras", "--target-semantics", "convolution")
    assert code == 0, err
    original = weights_by_layer(source)["conv_a"][0]          # (3, 2, 3, 4) HWIO, correlation
    flipped = weights_by_layer(str(out))["conv_a"][0]          # HWIO, convolution
    x = np.random.RandomState(5).uniform(-1, 1, (1, 9, 11, 3)).astype("float32")
    expected = tf.nn.conv2d(x, original, 1, "VALID").numpy()[0]  # (7, 10, 4)
    for o in range(4):
        got = sum(scipy.signal.convolve2d(x[0, :, :, i], flipped[:, :, i, o], mode="valid") for i in range(3))
        np.testing.assert_allclose(got, expected[:, :, o], rtol=1e-5, atol=1e-5)
    wrong = sum(scipy.signal.convolve2d(x[0, :, :, i], original[:, :, i, 0], mode="valid") for i in range(3))
    assert np.abs(wrong - expected[:, :, 0]).max() > 1e-2


def nested_keras_model(seed: int) -> keras.Model:
    """A functional model holding a Sequential and a functional block (two Conv2D, one per nesting level,
    plus a top-level Conv2D and Dense, so the per-model key counters are exercised)."""
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((7, 6, 4))
    branch = keras.layers.Conv2D(4, (2, 3), padding="same")(inner_in)
    block = keras.Model(inner_in, keras.layers.Add()([inner_in, branch]), name="block")
    stem = keras.Sequential([keras.layers.Conv2D(4, (3, 2), padding="same"), keras.layers.BatchNormalization()],
                            name="stem")
    inputs = keras.Input((7, 6, 3))
    y = block(stem(inputs))
    y = keras.layers.Conv2D(2, (3, 3))(y)
    y = keras.layers.Dense(5)(keras.layers.Flatten()(y))
    return keras.Model(inputs, y)


@pytest.mark.parametrize("source_suffix", [".keras", ".h5", ".weights.h5"])
def test_nested_models_weights_h5_matches_keras_save_weights_and_loads(run_cli, tmp_path, source_suffix):
    model = nested_keras_model(21)
    for variable in model.weights:  # batch-norm statistics off their defaults too
        variable.assign(np.random.default_rng(len(variable.path)).uniform(0.5, 1.5, variable.shape))
    source, ours, theirs = tmp_path / f"src{source_suffix}", tmp_path / "ours.weights.h5", tmp_path / "k.weights.h5"
    model.save_weights(str(source)) if source_suffix == ".weights.h5" else model.save(str(source))
    model.save_weights(str(theirs))
    middle = tmp_path / "middle.safetensors"  # through the torch file: the nesting rides in its metadata
    for src, out in ((source, middle), (middle, ours)):
        code, _, err = run_cli("convert", src, "-o", out, "--quiet")
        assert code == 0, err
    expected, written = keras3_datasets(str(theirs)), keras3_datasets(str(ours))
    assert sorted(expected) == sorted(written) and any("/layers/" in key[len("layers/"):] for key in expected)
    for key, array in expected.items():
        assert array.dtype == written[key].dtype and np.array_equal(array, written[key]), key
    other = nested_keras_model(22)
    other.load_weights(str(ours))
    x = np.random.default_rng(23).standard_normal((2, 7, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_tf_keras2_nested_model_weights_h5_loads_into_keras3(run_cli, tmp_path):
    """tf.keras 2's nested_residual (a functional block inside a functional model), rebuilt in Keras 3 as
    fixtures/tf_keras2/make_tf_keras2_fixtures.py built it: loads our .weights.h5 and reproduces tf.keras's
    recorded output."""
    source, ours = fixture_path("tf_keras2", "nested_residual.h5"), tmp_path / "nested.weights.h5"
    code, _, err = run_cli("convert", source, "-o", ours, "--quiet")
    assert code == 0, err
    layers = keras.layers
    block_in = keras.Input((8, 8, 4))
    block = keras.Model(block_in, layers.Add()([block_in, layers.Conv2D(4, (3, 3), padding="same")(block_in)]))
    inputs = keras.Input((8, 8, 3))
    y = block(layers.Conv2D(4, (1, 2), padding="same")(inputs))
    y = layers.AveragePooling2D((2, 2), padding="same")(layers.Conv2DTranspose(2, (3, 2), strides=2,
                                                                              padding="same")(y))
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(y)))
    model.load_weights(str(ours))
    x, expected = (np.load(fixture_path("tf_keras2", f"nested_residual.{n}.npy")) for n in ("input", "output"))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
