"""Large Keras models: Keras splits ``layer_names``/``weight_names`` attributes over 64 KiB into numbered
chunks (``layer_names0``, ``layer_names1``, ...). Read them, and write them the same way so that Keras's own
``load_weights`` takes the file. Truth: Keras 3 running the model with the weights it loaded."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.conftest import require

pytestmark = pytest.mark.requires("keras")

LAYERS = 520
LONG = "a_layer_with_a_very_long_descriptive_name_as_generated_by_nested_model_builders_" * 2


def deep_model(keras, seed: int):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((3,))]
    for index in range(LAYERS):
        layers.append(keras.layers.Dense(3 if index < LAYERS - 1 else 2, name=f"{LONG}{index:04d}",
                                         kernel_initializer=keras.initializers.RandomNormal(0.0, 0.6, seed=index),
                                         bias_initializer=keras.initializers.RandomNormal(0.0, 0.1, seed=seed + index)))
    return keras.Sequential(layers)


def test_chunked_layer_names_are_read_and_written_as_keras_writes_them(run_cli, tmp_path):
    keras = require("keras")
    source = tmp_path / "deep.h5"
    model = deep_model(keras, 1)
    model.save(str(source))  # Keras's legacy HDF5 writer chunks the attributes itself
    with h5py.File(source) as handle:
        assert "layer_names0" in handle["model_weights"].attrs and "layer_names" not in handle["model_weights"].attrs
    code, out, err = run_cli("inspect", source)
    assert code == 0, err
    assert f"{LONG}{LAYERS - 1:04d}" in out

    out_path = tmp_path / "out.h5"
    code, _, err = run_cli("convert", source, "-o", out_path, "--to", "keras")
    assert code == 0, err
    with h5py.File(out_path) as handle:
        chunks = [key for key in handle.attrs if key.startswith("layer_names")]
        assert len(chunks) > 1 and "layer_names" not in chunks
        assert all(handle.attrs[key].nbytes <= 64512 for key in chunks)
    target = deep_model(keras, 2)  # other weights until loaded
    x = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    assert not np.allclose(np.asarray(target(x)), np.asarray(model(x)))
    target.load_weights(str(out_path))
    np.testing.assert_allclose(np.asarray(target(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
