"""Custom layers kept with --keep-unknown, written to Keras 3 ``.weights.h5``: each one's tensors go where
Keras 3 expects them (``layers/<class in snake case>/vars/0, 1, ...``), so Keras 3's own ``load_weights`` into
the same architecture (the custom layer defined here) reproduces the source model's output."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require

pytestmark = pytest.mark.requires("keras")


def custom_model():
    keras = require("keras")

    @keras.saving.register_keras_serializable(package="weightport_test")
    class ScaleShift(keras.layers.Layer):
        """Two variables of different shapes: a swap or an order mistake cannot load or reproduce."""

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="w")
            self.b = self.add_weight(shape=(2, shape[-1]), initializer="random_normal", name="b")

        def call(self, x):
            return x * self.w + self.b[0] - self.b[1]

    i = keras.Input((5,))
    x = ScaleShift()(keras.layers.Dense(4)(i))
    return keras.Model(i, ScaleShift()(keras.layers.Dense(3)(x)))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_custom_layer_weights_load_into_keras3(run_cli, tmp_path, suffix):
    keras = require("keras")
    keras.utils.set_random_seed(1)
    model = custom_model()
    x = np.random.default_rng(1).standard_normal((2, 5)).astype("float32")
    source = tmp_path / f"custom{suffix}"
    model.save(str(source))
    out = tmp_path / "out.weights.h5"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 2 and "--keep-unknown" in err  # refused without it, naming the fix
    code, _, err = run_cli("convert", source, "-o", out, "--keep-unknown")
    assert code == 0, err
    fresh = custom_model()
    before = fresh.predict(x, verbose=0)
    fresh.load_weights(str(out))
    expected = model.predict(x, verbose=0)
    assert np.abs(before - expected).max() > 1e-3  # a fresh model differs: the loaded weights make it equal
    np.testing.assert_allclose(fresh.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    # validate finds every group claimed (no "arrays no layer takes"); the custom class is registered in this
    # process, so Keras 3 rebuilds the source and runs it with the file loaded: the whole model covers them
    code, report, err = run_cli("validate", source, out, "--keep-unknown")
    assert code == 0 and "FAIL" not in report and "PASS whole model vs Keras 3 running the source" in report, \
        report + err


def test_weights_only_custom_layer_without_its_class_is_still_refused(run_cli, tmp_path):
    """textgenrnn's weights-only file does not say its attention layer's class: no Keras 3 group name."""
    from tests.conftest import fixture_path
    code, _, err = run_cli("convert", fixture_path("real", "keras", "textgenrnn_weights.hdf5"), "-o",
                           tmp_path / "t.weights.h5", "--keep-unknown")
    assert code == 2 and "attention" in err and "no known Keras 3 class" in err, err
