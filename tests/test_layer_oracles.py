"""No unchecked weighted layer (issue 19): every weighted layer kind weightport converts has a layer check
that runs, under both kernel semantics, and the check fails when the converted tensor is wrong.

* Every fixture that converts to torch is validated layer by layer (no ``--input``/``--expected``, so only
  the layer checks can cover the layers): each weighted layer has a layer check, and it passes.
* A mistake made by hand in the converted file with numpy (a flipped kernel, H and W swapped, a bias
  zeroed or dropped, a batch-norm variance changed, gates or directions exchanged, ...) fails that
  layer's check, naming the likely cause where one is known.
* The oracles themselves reproduce what the real frameworks recorded: single-layer Keras 1/2-on-Theano
  and Keras 3 fixtures, and Theano's grouped, dilated, strided and batch-norm arithmetic, on their
  recorded inputs (so an oracle agreeing with the torch side is agreeing with the framework).
* Layers no fixture holds (rank 1 and 3 and strided/dilated transposed convs, 1-D depthwise and
  separable convs, go_backwards and bidirectional GRUs, per-channel PReLU) are built in Keras 3 here;
  the oracle matches the Keras layer's own output, and the port passes.
"""

from __future__ import annotations

import ast
import glob
import json
import os

import numpy as np
import pytest

from tests.conftest import FIXTURES, fixture_path, require

pytestmark = pytest.mark.requires("torch")

K1 = ("--assume-backend", "theano")

# Fixtures the torch target refuses (exit 2), and why: their layers are checked where they convert.
NOT_FOR_TORCH = {
    "keras3/rnn_hard_sigmoid.h5": "hard_sigmoid", "keras3/rnn_hard_sigmoid.keras": "hard_sigmoid",
    "keras3/rnn_hard_sigmoid.weights.h5": "reset_after=False",
    "tf_keras2/gru_reset_before.h5": "reset_after=False", "tf_keras2/gru_reset_before.save_weights.h5": "reset_after=False",
    "keras_theano/k1_gru.h5": "reset_after=False", "keras_theano/k1_lstm.h5": "hard_sigmoid",
    "keras_theano/k2_gru_reset_before.h5": "reset_after=False", "onnx/gru_reset_before.onnx": "reset_after=False",
    "tf_keras2/nested_residual.save_weights.h5": "weights-only file", "tf_keras2/rnn_stack.save_weights.h5": "weights-only file",
}
SOURCE_GLOBS = ("keras3/*.h5", "keras3/*.keras", "tf_keras2/*.h5", "keras_theano/*.h5", "onnx/*.onnx", "theano/*.pkl",
                "theano/*.npz", "theano/*.zip", "theano_target/*.h5", "theano_target/*.pkl")
SOURCES = sorted(os.path.relpath(path, FIXTURES) for pattern in SOURCE_GLOBS
                 for path in glob.glob(os.path.join(FIXTURES, pattern)))


def extra_args(source: str) -> tuple[str, ...]:
    return K1 if os.path.basename(source).startswith("k1_") else ()


def needs(source: str) -> None:
    require("onnxruntime" if source.endswith(".onnx") else "tensorflow")


def convert(run_cli, tmp_path, source: str) -> str:
    out = tmp_path / (os.path.basename(source).replace(".", "_") + ".safetensors")
    code, _, err = run_cli("convert", fixture_path(source), "-o", out, "--quiet", *extra_args(source))
    assert code == 0, err
    return str(out)


def layer_checks(run_cli, source: str, converted: str) -> tuple[int, dict[str, dict]]:
    """Validate with layer checks only; (exit code, {layer: its layer check})."""
    code, out, err = run_cli("validate", fixture_path(source), converted, "--json", *extra_args(source))
    report = json.loads(out)
    checks = [c for c in report["checks"] if c["check"] == "layer"]
    by_layer = {c["layer"]: c for c in checks}
    assert len(by_layer) == len(checks), checks
    return code, by_layer


def weighted_layers(source: str) -> set[str]:
    from weightport import load
    backend = "theano" if extra_args(source) else None
    return {layer.name for layer in load(fixture_path(source), assume_backend=backend).layers if layer.tensors}


def test_every_fixture_is_listed():
    assert len(SOURCES) >= 80 and set(NOT_FOR_TORCH) <= set(SOURCES)


@pytest.mark.parametrize("source", SOURCES)
def test_every_weighted_layer_of_every_fixture_is_checked_and_passes(run_cli, tmp_path, source):
    if source in NOT_FOR_TORCH:
        out = tmp_path / "refused.safetensors"
        code, _, err = run_cli("convert", fixture_path(source), "-o", out, *extra_args(source))
        assert code == 2 and NOT_FOR_TORCH[source] in err and not out.exists(), err
        return
    needs(source)
    code, checks = layer_checks(run_cli, source, convert(run_cli, tmp_path, source))
    assert set(checks) == weighted_layers(source)
    assert {name: c["status"] for name, c in checks.items()} == {name: "pass" for name in checks}, checks
    assert code == 0


# ------------------------------------------------------------------------------------- mistakes by hand
def tamper(path: str, out: str, change) -> str:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    tensors = load_file(path)
    with safe_open(path, "np") as handle:
        metadata = dict(handle.metadata() or {})
    change(tensors)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, out, metadata=metadata)
    return out


def flip(param):
    def change(t):
        t[param] = t[param][(slice(None), slice(None)) + (slice(None, None, -1),) * (t[param].ndim - 2)]
    return change


def swap_hw(param):
    def change(t):
        t[param] = t[param].swapaxes(2, 3)
    return change


def scale(param, factor):
    def change(t):
        t[param] = t[param] * np.float32(factor)
    return change


def swap_blocks(params, first, second, blocks):
    """Exchange two gate blocks (of ``blocks`` equal ones on axis 0) in each of ``params``."""
    def change(t):
        for param in params:
            parts = np.split(t[param], blocks, axis=0)
            parts[first], parts[second] = parts[second], parts[first]
            t[param] = np.concatenate(parts, axis=0)
    return change


def swap_params(a, b):
    def change(t):
        t[a], t[b] = t[b], t[a]
    return change


def swap_directions(layer):
    def change(t):
        for key in [k for k in t if k.startswith(layer + ".") and k.endswith("_reverse")]:
            swap_params(key, key[: -len("_reverse")])(t)
    return change


def square(param):
    def change(t):
        t[param] = t[param] * t[param]
    return change


RNN = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def both(layer):
    """A bidirectional RNN layer's tensors, both directions."""
    return [f"{layer}.{p}{suffix}" for p in RNN for suffix in ("", "_reverse")]


FLIP = "180-degree flip"
TAMPERED = [  # (source, layer, mistake made in the converted file, likely cause named or None)
    ("keras3/conv2d_transpose_single.h5", "deconv", flip("deconv.weight"), FLIP),  # strides (2, 1)
    ("keras3/functional_residual.h5", "deconv", flip("deconv.weight"), FLIP),
    ("keras_theano/k2_transpose_single.h5", "conv", flip("conv.weight"), FLIP),  # Keras 2 on Theano
    ("keras_theano/k1_deconv.h5", "conv", flip("conv.weight"), FLIP),  # Keras 1 Deconvolution2D on Theano
    ("onnx/torch_convtranspose.onnx", "1", flip("1.weight"), FLIP),  # grouped, strides (1, 2)
    ("keras3/conv2d_transpose_single.h5", "deconv", scale("deconv.bias", 0.0), None),  # bias dropped (zeroed)
    ("keras3/functional_residual.h5", "separable", flip("separable.depthwise.weight"), FLIP),
    ("keras_theano/k2_separable_single.h5", "conv", flip("conv.depthwise.weight"), FLIP),
    ("tf_keras2/cnn_sequential.h5", "separable_conv2d", swap_blocks(["separable_conv2d.pointwise.weight"], 0, 1, 5),
     None),  # strided separable, two pointwise filters exchanged
    ("tf_keras2/cnn_sequential.h5", "depthwise_conv2d", flip("depthwise_conv2d.weight"), FLIP),
    ("keras_theano/k2_depthwise_single.h5", "conv", flip("conv.weight"), FLIP),
    ("keras_theano/k2_cnn_channels_last.h5", "conv_same_s2", flip("conv_same_s2.weight"), FLIP),  # strided, Theano
    ("keras_theano/k2_cnn_channels_first.h5", "conv_dilated", swap_hw("conv_dilated.weight"), "H/W transposed"),
    ("keras_theano/k2_cnn_channels_first.h5", "conv_dilated", flip("conv_dilated.weight"), FLIP),
    ("keras_theano/k1_conv1d.h5", "conv", flip("conv.weight"), FLIP),  # Keras 1 Convolution1D (w 1 i o)
    ("theano/theano_grouped.savez.npz", "g", flip("g.weight"), FLIP),  # groups 2, Theano
    ("theano/theano_grouped.savez.npz", "d", flip("d.weight"), FLIP),  # dilations (2, 1), Theano
    ("theano/theano_cnn_noflip.savez.npz", "conv1", flip("conv1.weight"), FLIP),  # Lasagne correlation kernel
    ("theano/theano_cnn.savez.npz", "conv2", flip("conv2.weight"), FLIP),  # strided correlation kernel
    ("keras3/cnn_flatten_dense.h5", "bn", square("bn.running_var"), "running_var squared"),
    ("keras3/cnn_flatten_dense.h5", "bn", scale("bn.running_var", 2.0), None),
    ("keras_theano/k1_batchnorm_dense.h5", "bn", square("bn.running_var"), "running_var squared"),  # running_std
    ("tf_keras2/cnn_sequential.h5", "batch_normalization",
     swap_params("batch_normalization.weight", "batch_normalization.bias"), "gamma and beta swapped"),
    ("theano/theano_cnn.savez.npz", "bn", None, "inv_std"),  # Lasagne's inv_std written as the variance
    ("tf_keras2/embedding_conv1d.h5", "embedding", lambda t: t.update({"embedding.weight": t["embedding.weight"][::-1]}),
     None),  # rows in reverse order
    ("tf_keras2/cnn_sequential.h5", "p_re_lu", lambda t: t.update({"p_re_lu.weight": t["p_re_lu.weight"].swapaxes(0, 2)}),
     None),  # (C, H, W) read as (W, H, C): the same shape here
    ("tf_keras2/rnn_stack.h5", "bidirectional", swap_directions("bidirectional"), "directions swapped"),
    ("tf_keras2/rnn_stack.h5", "bidirectional_1", swap_blocks(both("bidirectional_1"), 0, 1, 3), "gates in the wrong order"),
    ("tf_keras2/rnn_stack.h5", "time_distributed", scale("time_distributed.weight", -1.0), None),
    ("onnx/lstm_bidirectional.onnx", "lstm_bidirectional",
     swap_blocks(both("lstm_bidirectional"), 1, 2, 4), "gates in the wrong order"),
    ("keras3/conv1d_rnn.h5", "lstm", swap_blocks([f"lstm.{p}" for p in RNN], 2, 3, 4), "gates in the wrong order"),
]


def inv_std_written(t):
    """What a port that forgot Lasagne's ``inv_std`` writes: the stored inv_std as the running variance."""
    from weightport import load
    model = load(fixture_path("theano", "theano_cnn.savez.npz"))
    t["bn.running_var"] = np.asarray(model.layer("bn").tensors["running_var"].read())


@pytest.mark.parametrize("source, layer, change, cause", TAMPERED,
                         ids=[f"{s.split('/')[-1]}:{layer}:{cause or 'no-cause'}" for s, layer, _, cause in TAMPERED])
def test_a_mistake_in_the_converted_file_fails_that_layer(run_cli, tmp_path, source, layer, change, cause):
    needs(source)
    good = convert(run_cli, tmp_path, source)
    bad = tamper(good, str(tmp_path / "bad.safetensors"), change or inv_std_written)
    code, checks = layer_checks(run_cli, source, bad)
    assert code == 1 and checks[layer]["status"] == "fail", checks[layer]
    if cause:
        assert cause in (checks[layer]["likely_cause"] or ""), checks[layer]
    others = {name: c["status"] for name, c in checks.items() if name != layer}
    assert set(others.values()) <= {"pass"}, others  # the mistake is pinned on its own layer


def test_a_dropped_bias_fails_the_layer_check(tmp_path):
    """A converted file without a layer's bias (the names check refuses that file first; the layer check,
    given the tensors without it, fails on its own)."""
    require("tensorflow")
    from weightport import load
    from weightport.checks.layer_check import TorchSide, check_layers
    model = load(fixture_path("keras3", "conv2d_transpose_single.h5"))
    converted = {layer.name: {p: t.load() for p, t in layer.tensors.items()} for layer in model.layers}
    assert [c.status for c in check_layers(model, TorchSide(converted), 1e-5, 1e-4)] == ["pass"]
    del converted["deconv"]["bias"]
    assert [c.status for c in check_layers(model, TorchSide(converted), 1e-5, 1e-4)] == ["fail"]


def canonical_side(model):
    from weightport.checks.layer_check import TorchSide
    return TorchSide({layer.name: {p: t.load() for p, t in layer.tensors.items()} for layer in model.layers})


def test_go_backwards_lstm_of_a_real_fixture_is_checked():
    """tf_keras2/gru_reset_before ends with ``LSTM(2, go_backwards=True)`` (its GRU keeps the file from the
    torch target): Keras's backwards LSTM and the torch side's reversed reading agree, step by step."""
    require("tensorflow")
    from weightport import load
    from weightport.checks.layer_check import check_layer
    model = load(fixture_path("tf_keras2", "gru_reset_before.h5"))
    layer = model.layer("lstm_1")
    assert layer.attrs["go_backwards"]
    side = canonical_side(model)
    assert check_layer(layer, side, 1e-5, 1e-4).status == "pass"
    tensors = side.converted["lstm_1"]
    side.converted["lstm_1"] = {**tensors, "weight_hh_l0": tensors["weight_hh_l0"][::-1].copy()}
    assert check_layer(layer, side, 1e-5, 1e-4).status == "fail"


# ------------------------------------------------------------------ the oracles against the frameworks
def oracle_output(model, name: str, x_first: np.ndarray) -> np.ndarray:
    from weightport.checks.layer_check import kernel_semantics, run_source, stored_arrays
    from weightport.core.oracle import LayerCase
    layer = model.layer(name)
    stored, patterns = stored_arrays(layer)
    case = LayerCase(layer, stored, patterns, kernel_semantics(layer), model.source.format, model.source.version)
    return run_source(case, x_first)


SINGLE = [  # (folder, name, layer, channels-last input and output)
    ("keras_theano", "k2_conv1d_single", "conv", True), ("keras_theano", "k2_conv2d_single", "conv", True),
    ("keras_theano", "k2_conv3d_single", "conv", True), ("keras_theano", "k2_depthwise_single", "conv", True),
    ("keras_theano", "k2_separable_single", "conv", True), ("keras_theano", "k2_transpose_single", "conv", True),
    ("keras_theano", "k1_conv2d_single_th", "conv", False), ("keras_theano", "k1_deconv", "conv", False),
    ("keras3", "conv2d_transpose_single", "deconv", True),
]


@pytest.mark.parametrize("folder, name, layer, channels_last", SINGLE)
def test_the_oracle_reproduces_the_output_the_framework_recorded(folder, name, layer, channels_last):
    """Valid single-layer models: the oracle on the stored arrays gives what Keras/Theano recorded."""
    require("tensorflow")
    from weightport import load
    model = load(fixture_path(folder, f"{name}.h5"), assume_backend="theano" if name.startswith("k1_") else None)
    x, y = np.load(fixture_path(folder, f"{name}.input.npy")), np.load(fixture_path(folder, f"{name}.output.npy"))
    if channels_last:
        x, y = np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 1)
    got = oracle_output(model, layer, x)
    assert got.dtype == np.float32 and np.abs(got - y).max() <= 1e-5 * max(1.0, np.abs(y).max())


def test_the_scipy_oracle_reproduces_theano_grouped_and_dilated_convolutions():
    from weightport import load
    model = load(fixture_path("theano", "theano_grouped.savez.npz"))
    x, y = np.load(fixture_path("theano", "theano_grouped.input.npy")), np.load(fixture_path("theano", "theano_grouped.output.npy"))
    got = oracle_output(model, "d", oracle_output(model, "g", x))
    assert np.abs(got - y).max() <= 1e-5 * max(1.0, np.abs(y).max())


@pytest.mark.parametrize("name", ["theano_cnn", "theano_cnn_noflip"])
def test_the_numpy_oracles_reproduce_a_theano_network(name):
    """relu(conv1) -> Lasagne batch norm (stored inv_std) -> conv2 (strides 2, pads 1, correlation) ->
    flatten -> tanh(dense), each weighted layer computed by its oracle, as Theano computed it."""
    from weightport import load
    model = load(fixture_path("theano", f"{name}.savez.npz"))
    x, y = np.load(fixture_path("theano", f"{name}.input.npy")), np.load(fixture_path("theano", f"{name}.output.npy"))
    h = np.maximum(oracle_output(model, "conv1", x), 0)
    h = oracle_output(model, "bn", h)
    h = oracle_output(model, "conv2", np.pad(h, [(0, 0), (0, 0), (1, 1), (1, 1)]))
    got = np.tanh(oracle_output(model, "dense", h.reshape(h.shape[0], -1)))
    assert np.abs(got - y).max() <= 1e-5


# ---------------------------------------------------------- layers no fixture holds, built in Keras 3
def keras3_layer(keras, name: str):
    """A Keras 3 layer no fixture holds, and its input shape (without the batch)."""
    L = keras.layers
    return {
        "conv1d_transpose_strided": lambda: (L.Conv1DTranspose(3, 3, strides=2), (7, 2)),
        "conv2d_transpose_dilated": lambda: (L.Conv2DTranspose(4, (3, 2), dilation_rate=(2, 1)), (5, 6, 3)),
        "conv3d_transpose_strided": lambda: (L.Conv3DTranspose(2, (2, 3, 2), strides=(1, 2, 2)), (3, 4, 3, 2)),
        "conv2d_grouped_strided": lambda: (L.Conv2D(6, (3, 2), strides=(2, 1), groups=3), (9, 8, 3)),
        "depthwise1d_dilated": lambda: (L.DepthwiseConv1D(3, depth_multiplier=2, dilation_rate=2), (11, 3)),
        "separable1d_strided": lambda: (L.SeparableConv1D(4, 3, strides=2, depth_multiplier=2), (11, 3)),
        "separable2d_dilated": lambda: (L.SeparableConv2D(4, (2, 3), dilation_rate=(2, 1)), (8, 9, 3)),
        "prelu_shared": lambda: (L.PReLU(shared_axes=[1, 2]), (4, 5, 3)),
        "lstm_backwards": lambda: (L.LSTM(3, go_backwards=True, return_sequences=True), (6, 4)),
        # Keras 3 builds a backwards Bidirectional only with its backward layer given (named as Keras names it)
        "gru_bidirectional_backwards": lambda: (L.Bidirectional(
            L.GRU(3, go_backwards=True, return_sequences=True, name="gru"),
            backward_layer=L.GRU(3, return_sequences=True, name="backward_gru")), (6, 4)),
        "lstm_bidirectional": lambda: (L.Bidirectional(L.LSTM(3, return_sequences=True)), (6, 4)),
        "embedding": lambda: (L.Embedding(9, 4), (5,)),
    }[name]()


@pytest.mark.parametrize("name", ["conv1d_transpose_strided", "conv2d_transpose_dilated", "conv3d_transpose_strided",
                                  "conv2d_grouped_strided", "depthwise1d_dilated", "separable1d_strided",
                                  "separable2d_dilated", "prelu_shared", "lstm_backwards",
                                  "gru_bidirectional_backwards", "lstm_bidirectional", "embedding"])
def test_keras3_layers_without_fixtures_are_checked(run_cli, tmp_path, name):
    keras = require("keras")
    from weightport import load
    layer, shape = keras3_layer(keras, name)
    inputs = keras.Input(shape, dtype="int32" if name == "embedding" else "float32")
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(7)
    model.set_weights([rng.uniform(-1, 1, w.shape).astype(np.float32) for w in model.get_weights()])
    source = tmp_path / f"{name}.h5"
    model.save(source)
    if name == "embedding":
        x = rng.integers(0, 9, (2, *shape))
    else:
        x = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    y = np.asarray(model(x))
    loaded = load(str(source))
    weighted = [lay for lay in loaded.layers if lay.tensors][0]
    spatial = weighted.kind in ("conv", "conv_transpose", "depthwise", "separable", "prelu")
    got = oracle_output(loaded, weighted.name, np.moveaxis(x, -1, 1) if spatial else x)  # the oracle is the Keras layer
    assert np.abs((np.moveaxis(got, 1, -1) if spatial else got) - y).max() <= 1e-5 * max(1.0, np.abs(y).max())
    out = tmp_path / f"{name}.safetensors"
    assert run_cli("convert", source, "-o", out, "--quiet")[0] == 0
    code, stdout, _ = run_cli("validate", source, out, "--json")
    checks = [c for c in json.loads(stdout)["checks"] if c["check"] == "layer"]
    assert code == 0 and [(c["layer"], c["status"]) for c in checks] == [(weighted.name, "pass")], checks


def test_an_onnx_reverse_lstm_is_checked_in_reading_order(tmp_path):
    """ONNX puts a reverse LSTM's outputs at the positions of their input steps; the check compares them
    in the order the layer read the steps, the canonical module's convention, and catches swapped gates."""
    require("onnxruntime")
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from weightport import load
    from weightport.checks.layer_check import check_layer
    rng = np.random.default_rng(5)
    arrays = {"W": rng.uniform(-1, 1, (1, 16, 3)), "R": rng.uniform(-1, 1, (1, 16, 4)), "B": rng.uniform(-1, 1, (1, 32))}
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=4, direction="reverse")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()])
    source = tmp_path / "reverse.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, source)
    loaded = load(str(source))
    layer = [lay for lay in loaded.layers if lay.tensors][0]
    side = canonical_side(loaded)
    assert layer.attrs["go_backwards"] and check_layer(layer, side, 1e-5, 1e-4, source_format="onnx").status == "pass"
    tensors = side.converted[layer.name]
    side.converted[layer.name] = {k: np.concatenate(np.split(v, 4)[::-1]) for k, v in tensors.items()}
    check = check_layer(layer, side, 1e-5, 1e-4, source_format="onnx")
    assert check.status == "fail"


# ------------------------------------------------------------------------------ diagnosis and contract
def test_a_1x1_kernel_is_not_ambiguous_and_a_symmetric_wide_one_is():
    from weightport.checks.layer_check import ambiguity, candidate_mistakes
    from weightport.core.model import Layer
    rng = np.random.default_rng(0)
    conv, transpose = Layer("c", "conv", {"groups": 1}), Layer("t", "conv_transpose", {"groups": 1})
    pointwise = rng.uniform(size=(4, 3, 1, 1)).astype(np.float32)
    assert ambiguity(conv, {"weight": pointwise}) is None
    assert not [m for m, _ in candidate_mistakes(conv, {"weight": pointwise}) if "flip" in m or "H/W" in m]
    column = np.array([1.0, 2.0, 1.0], np.float32).reshape(1, 1, 3, 1)
    assert "180-degree rotation" in ambiguity(conv, {"weight": column})
    kernel = rng.uniform(size=(3, 2, 3, 3)).astype(np.float32)
    symmetric = (kernel + kernel[:, :, ::-1, ::-1]) / 2
    assert "180-degree rotation" in ambiguity(transpose, {"weight": symmetric})
    separable = Layer("s", "separable")
    assert "H/W transpose" in ambiguity(separable, {"depthwise.weight": (kernel + kernel.swapaxes(2, 3)) / 2})
    assert ambiguity(separable, {"depthwise.weight": kernel}) is None


def test_every_weighted_kind_has_an_oracle_for_every_source():
    from weightport.checks.layer_check import ORACLES, RUNNABLE, oracle_for
    from weightport.core.model import WEIGHTED_KINDS, Layer
    from weightport.core.oracle import LayerCase
    assert set(RUNNABLE) == set(WEIGHTED_KINDS)
    for source_format in ("keras_h5", "keras3", "onnx", "theano_pickle"):
        for kind in WEIGHTED_KINDS:
            for semantics in ("convolution", "correlation"):
                assert oracle_for(LayerCase(Layer("x", kind), {}, {}, semantics, source_format))
    assert all(name.split(":")[0].startswith("weightport.formats.") for *_, name in ORACLES)


def test_the_oracles_never_use_weightports_layout_code():
    """A layout bug must not cancel out: no oracle imports weightport.core.layout or weightport.core.steps."""
    root = os.path.dirname(FIXTURES)
    for folder in ("numpy", "keras", "onnx", "caffe", "torch7"):
        tree = ast.parse(open(os.path.join(root, "formats", folder, "oracle.py")).read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {"weightport.core.layout", "weightport.core.steps"} & imported, (folder, imported)


def test_the_scipy_oracle_computes_in_the_dtype_it_is_given():
    """float32 in, float32 out (the source's own float32 noise); float64 in, float64 out (the reference)."""
    from weightport.checks.layer_check import kernel_semantics, stored_arrays
    from weightport.core.oracle import LayerCase
    from weightport import load
    from weightport.formats.numpy.oracle import scipy_conv
    model = load(fixture_path("theano", "theano_grouped.savez.npz"))
    layer = model.layer("g")
    stored, patterns = stored_arrays(layer)
    case = LayerCase(layer, stored, patterns, kernel_semantics(layer), "theano_pickle")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 6, 5)).astype(np.float32)
    assert scipy_conv(case, x).dtype == np.float32
    wide = LayerCase(layer, {k: v.astype(np.float64) for k, v in stored.items()}, patterns, case.semantics, "theano_pickle")
    y32, y64 = scipy_conv(case, x), scipy_conv(wide, x.astype(np.float64))
    assert y64.dtype == np.float64 and 0 < np.abs(y64 - y32).max() < 1e-5


def onnx_graphs(tmp_path):
    """ONNX graphs of the kinds no ONNX fixture holds: BatchNormalization -> PRelu (a per-channel slope
    unsqueezed to (C, 1, 1) as torch.onnx writes it) -> ConvTranspose (strides, dilations, groups), and an
    embedding (Gather of a table by integer indices)."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(11)

    def constant(name, *shape, low=-1.0):
        return numpy_helper.from_array(rng.uniform(low, 1, shape).astype(np.float32), name)

    def save(name, nodes, inputs, initializers):
        graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, tmp_path / f"{name}.onnx")
        return f"{name}.onnx"
    maps = save("maps", [
        helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["b"], name="bn", epsilon=0.01),
        helper.make_node("Unsqueeze", ["slope", "axes"], ["slope3"]),
        helper.make_node("PRelu", ["b", "slope3"], ["p"], name="prelu"),
        helper.make_node("ConvTranspose", ["p", "kernel", "bias"], ["y"], name="deconv", strides=[2, 1],
                         dilations=[1, 2], group=2)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 6])],
        [constant("gamma", 4), constant("beta", 4), constant("mean", 4), constant("var", 4, low=0.5),
         constant("slope", 4), numpy_helper.from_array(np.array([1, 2], np.int64), "axes"), constant("kernel", 4, 3, 3, 2),
         constant("bias", 6)])
    table = save("table", [helper.make_node("Gather", ["table", "x"], ["y"], name="embedding", axis=0)],
                 [helper.make_tensor_value_info("x", TensorProto.INT64, [2, 5])], [constant("table", 9, 4)])
    return maps, table


ONNX_TAMPERED = [("maps", "bn", scale("bn.running_var", 3.0)), ("maps", "prelu", scale("prelu.weight", -1.0)),
                 ("maps", "deconv", flip("deconv.weight")),
                 ("table", "embedding", lambda t: t.update({"embedding.weight": t["embedding.weight"][::-1]}))]


def test_onnx_batchnorm_prelu_conv_transpose_and_gather_are_checked_in_onnxruntime(run_cli, tmp_path):
    require("onnxruntime")
    graphs = dict(zip(("maps", "table"), onnx_graphs(tmp_path)))
    converted = {}
    for name, file in graphs.items():
        converted[name] = str(tmp_path / f"{name}.safetensors")
        assert run_cli("convert", tmp_path / file, "-o", converted[name], "--quiet")[0] == 0
        code, out, _ = run_cli("validate", tmp_path / file, converted[name], "--json")
        checks = {c["layer"]: c["status"] for c in json.loads(out)["checks"] if c["check"] == "layer"}
        assert code == 0 and checks == {layer: "pass" for graph, layer, _ in ONNX_TAMPERED if graph == name}, out
    for name, layer, change in ONNX_TAMPERED:
        bad = tamper(converted[name], str(tmp_path / "bad.safetensors"), change)
        code, out, _ = run_cli("validate", tmp_path / graphs[name], bad, "--json")
        checks = {c["layer"]: c for c in json.loads(out)["checks"] if c["check"] == "layer"}
        assert code == 1 and checks[layer]["status"] == "fail", (layer, checks)
        if layer == "deconv":
            assert FLIP in checks[layer]["likely_cause"]
