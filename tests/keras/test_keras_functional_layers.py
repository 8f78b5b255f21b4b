"""Keras functional layers run by the canonical torch module (validate, traced ONNX): each model is built
and run by Keras 3 itself, saved as Keras does, converted, and ``validate --input --expected`` must
reproduce Keras's output (the whole-model check, not only the layer checks)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require

pytestmark = pytest.mark.requires("keras", "torch")


def build(name: str):
    keras = require("keras")
    keras.utils.set_random_seed(11)
    L = keras.layers
    rng = np.random.default_rng(5)
    if name == "permute_flatten":
        i = keras.Input((6, 5, 3))
        x = L.Permute((2, 1, 3))(L.Conv2D(4, 3, activation="relu")(i))
        return keras.Model(i, L.Dense(3)(L.Flatten()(x))), rng.standard_normal((2, 6, 5, 3))
    if name == "reshape_to_sequence":
        i = keras.Input((6, 5, 3))
        x = L.Reshape((4, 15))(L.Conv2D(5, 3)(i))  # (4, 3, 5) -> (4, 15)
        return keras.Model(i, L.LSTM(3)(x)), rng.standard_normal((2, 6, 5, 3))
    if name == "sequence_concat":
        i = keras.Input((7, 4))
        x = L.Concatenate()([L.LSTM(3, return_sequences=True)(i), L.Dense(2)(i)])
        return keras.Model(i, L.Dense(2)(L.Flatten()(x))), rng.standard_normal((2, 7, 4))
    if name == "map_concat_on_height":
        i = keras.Input((6, 5, 3))
        a, b = L.Conv2D(4, 3, padding="same")(i), L.Conv2D(4, (1, 3), padding="same")(i)
        x = L.Concatenate(axis=1)([a, b])  # (12, 5, 4)
        return keras.Model(i, L.Dense(2)(L.Flatten()(L.Conv2D(2, 3)(x)))), rng.standard_normal((2, 6, 5, 3))
    if name == "repeat_vector":
        i = keras.Input((4,))
        x = L.RepeatVector(5)(L.Dense(3)(i))
        return keras.Model(i, L.GRU(2)(x)), rng.standard_normal((2, 4))
    if name == "merges":
        i = keras.Input((4,))
        a, b, c = L.Dense(3)(i), L.Dense(3)(i), L.Dense(3)(i)
        x = L.Concatenate()([L.Subtract()([a, b]), L.Average()([a, b, c]), L.Maximum()([a, c]), L.Minimum()([b, c])])
        return keras.Model(i, L.Dense(2)(x)), rng.standard_normal((2, 4))
    if name == "embedding_flatten":
        i = keras.Input((6,), dtype="int32")
        x = L.Flatten()(L.Embedding(10, 3)(i))
        return keras.Model(i, L.Dense(2)(x)), rng.integers(0, 10, (2, 6))
    if name == "spatial_ops":
        i = keras.Input((9, 8, 2))
        x = L.Conv2D(3, 3, dilation_rate=2, padding="same")(i)
        x = L.Cropping2D(((1, 0), (0, 2)))(L.ZeroPadding2D(((1, 2), (0, 1)))(L.UpSampling2D((2, 1))(x)))
        return keras.Model(i, L.GlobalMaxPooling2D()(x)), rng.standard_normal((2, 9, 8, 2))
    if name == "sequence_pooling_softmax":
        i = keras.Input((7,), dtype="int32")
        e = L.Embedding(12, 4)(i)
        x = L.Concatenate()([L.GlobalAveragePooling1D()(e), L.GlobalMaxPooling1D()(e)])
        s = L.Softmax()(L.TimeDistributed(L.Dense(3))(L.LSTM(5, return_sequences=True)(e)))
        return keras.Model(i, L.Concatenate()([x, L.Flatten()(s)])), rng.integers(0, 12, (2, 7))
    if name == "conv1d_global_pool":
        i = keras.Input((9, 3))
        x = L.Conv1D(4, 3, dilation_rate=2)(i)
        return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(x))), rng.standard_normal((2, 9, 3))
    if name == "dot":
        i = keras.Input((5, 3))
        a, b = L.Dense(4)(i), L.Dense(4)(i)
        attention = L.Dot(axes=(2, 2))([a, b])  # (5, 5)
        pooled_a, pooled_b = L.GlobalAveragePooling1D()(a), L.GlobalMaxPooling1D()(b)
        cosine = L.Dot(axes=1, normalize=True)([pooled_a, pooled_b])
        return keras.Model(i, L.Concatenate()([L.Flatten()(attention), cosine])), rng.standard_normal((2, 5, 3))
    raise KeyError(name)


NAMES = ["permute_flatten", "reshape_to_sequence", "sequence_concat", "map_concat_on_height", "repeat_vector",
         "merges", "embedding_flatten", "spatial_ops", "sequence_pooling_softmax", "conv1d_global_pool",
         "dot"]


@pytest.mark.parametrize("name", NAMES)
def test_validate_reproduces_keras(run_cli, tmp_path, name):
    model, x = build(name)
    x = x.astype("int32" if x.dtype.kind == "i" else "float32")
    source = tmp_path / f"{name}.h5"
    model.save(str(source))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(model(x)))
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    code, report, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy")
    assert code == 0, report + err
    assert "PASS whole model vs recorded output" in report


def test_keras_to_keras_after_permute_prints_one_warning(run_cli, tmp_path):
    model, _ = build("permute_flatten")
    source = tmp_path / "p.h5"
    model.save(str(source))
    code, _, err = run_cli("convert", source, "-o", tmp_path / "k.h5", "--to", "keras")
    assert code == 0, err
    dense_warnings = [line for line in err.splitlines() if "Flatten" in line]
    assert len(dense_warnings) == 1 and "layer 'permute" in dense_warnings[0]


@pytest.mark.parametrize("merge", ["sum", "mul", "ave", "concat"])
@pytest.mark.parametrize("sequences", [True, False])
def test_bidirectional_merge_modes_reproduce_keras(run_cli, tmp_path, merge, sequences):
    keras = require("keras")
    keras.utils.set_random_seed(4)
    i = keras.Input((6, 3))
    x = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=sequences), merge_mode=merge)(i)
    model = keras.Model(i, keras.layers.Dense(2)(x))
    x = np.random.default_rng(2).standard_normal((2, 6, 3)).astype("float32")
    source = tmp_path / "bi.h5"
    model.save(str(source))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(model(x)))
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    code, report, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy")
    assert code == 0 and "PASS whole model vs recorded output" in report, report + err


def test_embedding_mask_zero_before_an_rnn_is_a_skip_with_its_reason(run_cli, tmp_path):
    keras = require("keras")
    keras.utils.set_random_seed(1)
    i = keras.Input((6,), dtype="int32")
    model = keras.Model(i, keras.layers.LSTM(3)(keras.layers.Embedding(9, 4, mask_zero=True)(i)))
    x = np.array([[0, 0, 3, 4, 5, 1], [2, 3, 0, 0, 1, 8]], dtype="int32")
    source = tmp_path / "m.h5"
    model.save(str(source))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(model(x)))
    out = tmp_path / "out.safetensors"
    assert run_cli("convert", source, "-o", out)[0] == 0
    code, report, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy")
    assert code == 0, report + err  # every weighted layer checked; the whole model skipped, with why
    assert "SKIP whole model" in report and "mask_zero" in report
