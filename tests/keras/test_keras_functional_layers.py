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
    whole_model_passes(run_cli, tmp_path, source, x, np.asarray(model(x)))


def whole_model_passes(run_cli, tmp_path, source, x, expected) -> str:
    """Convert ``source`` to safetensors and validate it on ``x`` against Keras's ``expected``: the whole
    model must pass.  Returns the report."""
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", expected)
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", source, "-o", out, "--force")
    assert code == 0, err
    code, report, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy")
    assert code == 0 and "PASS whole model vs recorded output" in report, report + err
    return report


MASKED_INPUT = np.array([[3, 4, 5, 1, 2, 0, 0], [2, 3, 0, 0, 1, 8, 0], [0, 0, 5, 6, 7, 1, 2]], dtype="int32")


def masked_models(L):
    """RNNs reading an Embedding(mask_zero=True)'s mask (zeros at the end, in the middle, at the start)."""
    return {
        "lstm_last": lambda e: L.LSTM(3)(e),
        "gru_sequences": lambda e: L.GRU(3, return_sequences=True)(e),
        "stacked_through_dense": lambda e: L.LSTM(3)(L.Dense(4)(L.GRU(5, return_sequences=True)(e))),
        "go_backwards": lambda e: L.LSTM(3, go_backwards=True, return_sequences=True)(e),
        "zero_output_for_mask": lambda e: L.LSTM(3, return_sequences=True, zero_output_for_mask=True)(e),
        "bidirectional_sequences": lambda e: L.Bidirectional(L.LSTM(3, return_sequences=True))(e),
        "bidirectional_last": lambda e: L.Bidirectional(L.GRU(3))(e),
        "bidirectional_sum": lambda e: L.Bidirectional(L.LSTM(3), merge_mode="sum")(e),
    }


def masked_model(framework, name, mask_zero=True):
    framework.utils.set_random_seed(3)
    i = framework.Input((7,), dtype="int32")
    model = framework.Model(i, masked_models(framework.layers)[name](
        framework.layers.Embedding(9, 4, mask_zero=mask_zero)(i)))
    rng = np.random.default_rng(8)
    for layer in model.layers:  # unit-scale weights: a step taken or skipped moves the output visibly
        if layer.weights:
            layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    return model


MASKED_NAMES = ["lstm_last", "gru_sequences", "stacked_through_dense", "go_backwards", "zero_output_for_mask",
                "bidirectional_sequences", "bidirectional_last", "bidirectional_sum"]


# tf.keras 2's LSTM takes no zero_output_for_mask argument (only its RNN base does): that case is Keras 3's.
@pytest.mark.parametrize("framework,name", [("keras", n) for n in MASKED_NAMES] +
                         [("tf_keras", n) for n in MASKED_NAMES if n != "zero_output_for_mask"])
def test_rnn_after_embedding_mask_zero_skips_masked_steps_as_keras_does(run_cli, tmp_path, name, framework):
    """Keras carries an RNN's state through masked steps; the torch module does too: the whole-model check
    passes against Keras's output, and the same weights without the mask give a visibly different output
    (so a module ignoring the mask would fail)."""
    keras = require(framework)
    model = masked_model(keras, name)
    expected = np.asarray(model(MASKED_INPUT))
    unmasked = masked_model(keras, name, mask_zero=False)
    unmasked.set_weights(model.get_weights())
    assert np.abs(np.asarray(unmasked(MASKED_INPUT)) - expected).max() > 1e-2
    source = tmp_path / "m.h5"  # tf.keras writes legacy h5 only; Keras 3 the same, for one set of cases
    model.save(str(source))
    whole_model_passes(run_cli, tmp_path, source, MASKED_INPUT, expected)


def test_mask_reaching_an_rnn_through_a_merge_is_a_skip_with_its_reason(run_cli, tmp_path):
    """A mask that reaches an RNN through a layer the module does not follow (here Concatenate, which merges
    masks in Keras) is never run unmasked: the whole-model check is a skip naming mask_zero."""
    keras = require("keras")
    keras.utils.set_random_seed(1)
    i = keras.Input((7,), dtype="int32")
    e = keras.layers.Embedding(9, 4, mask_zero=True)(i)
    model = keras.Model(i, keras.layers.LSTM(3)(keras.layers.Concatenate()([e, e])))
    source = tmp_path / "m.keras"
    model.save(str(source))
    np.save(tmp_path / "x.npy", MASKED_INPUT)
    np.save(tmp_path / "y.npy", np.asarray(model(MASKED_INPUT)))
    out = tmp_path / "out.safetensors"
    assert run_cli("convert", source, "-o", out)[0] == 0
    code, report, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy")
    assert code == 0, report + err  # every weighted layer checked; the whole model skipped, with why
    assert "SKIP whole model" in report and "mask_zero" in report

@pytest.mark.parametrize("target,words", [("onnx", "which an ONNX LSTM/GRU node cannot do"),
                                          ("java", "mask_zero=True")])
def test_targets_that_cannot_mask_refuse_in_one_line(run_cli, tmp_path, target, words):
    """An ONNX LSTM/GRU node has no mask input and the Java forward pass runs every step: both refuse (no file
    that would compute the unmasked RNN)."""
    tf_keras = require("tf_keras")  # no NotEqual node in a tf.keras config: the Embedding itself is refused
    source = tmp_path / "m.h5"
    masked_model(tf_keras, "lstm_last").save(str(source))
    extra = ["--emit-forward"] if target == "java" else []
    code, _, err = run_cli("convert", source, "-o", tmp_path / ("m.onnx" if target == "onnx" else "m_java"),
                           "--to", target, *extra)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("sequences", [True, False])
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_bidirectional_merge_mode_none_gives_both_outputs(run_cli, tmp_path, sequences, suffix):
    """Bidirectional(merge_mode=None) returns forward and backward apart: a Subtract of the two (which would be
    zero, or a concat's halves, if they were mixed up) reproduces Keras, and so does a model whose outputs are
    the two (its first compared, said in a note)."""
    keras = require("keras")
    keras.utils.set_random_seed(4)
    i = keras.Input((6, 3))
    forward, backward = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=sequences),
                                                   merge_mode=None)(i)
    x = np.random.default_rng(2).standard_normal((2, 6, 3)).astype("float32")
    for name, model, first in (
            ("merged", keras.Model(i, keras.layers.Dense(2)(keras.layers.Subtract()([backward, forward]))), None),
            ("two", keras.Model(i, [forward, backward]), 0)):
        source = tmp_path / f"{name}{suffix}"
        model.save(str(source))
        outputs = model(x)
        report = whole_model_passes(run_cli, tmp_path, source, x,
                                    np.asarray(outputs if first is None else outputs[first]))
        if first is not None:
            assert "of 2 outputs; the recorded output was compared with its first" in report
