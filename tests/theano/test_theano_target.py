"""Theano/Lasagne target: arrays in Lasagne layout with flipped kernels.

Truth, never weightport's own reader: TensorFlow/Keras computing the source layers, and a real Theano 1.0.5
run of a pickle weightport wrote (fixtures/theano_target).  The written arrays are loaded with plain
``pickle.load``, as a Lasagne user does, and run through Lasagne's formulas written out in numpy here:

* Conv2DLayer: true convolution (``scipy.signal.convolve``, what Theano's ``conv2d`` computes with its default
  ``filter_flip=True``) of the written ``W``, subsampled by the stride, plus ``b`` per output channel;
* BatchNormLayer: ``(x - mean) * (gamma * inv_std) + beta``, with ``inv_std = 1 / sqrt(var + epsilon)``;
* FlattenLayer: C, H, W order; DenseLayer: ``x @ W + b`` with ``W`` of shape (num_inputs, num_units).
"""

from __future__ import annotations

import json
import pickle
import pickletools

import h5py
import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
import torch

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, canonical_state_dict
from weightport.formats.theano.reader import read_arrays
from tests.conftest import fixture_path

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")
BN_CNN = fixture_path("theano_target", "bn_cnn.h5")


def written(run_cli, tmp_path, source: str) -> tuple[dict[str, np.ndarray], dict]:
    """``source`` written with --to theano: its arrays by spec name (plain pickle.load) and its spec."""
    out = tmp_path / "lasagne.pkl"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "theano")
    assert code == 0, err
    return pickled_arrays(str(out), str(tmp_path / "lasagne.spec.json"))


def pickled_arrays(path: str, spec_path: str) -> tuple[dict[str, np.ndarray], dict]:
    with open(path, "rb") as handle:
        arrays = pickle.load(handle)  # a list of plain arrays, as lasagne.layers.set_all_param_values takes
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    assert all(isinstance(a, np.ndarray) for a in arrays) and len(arrays) == len(spec["arrays"])
    return dict(zip(spec["arrays"], arrays)), spec


def keras_weights(path: str, layer: str) -> list[np.ndarray]:
    with h5py.File(path) as f:
        group = f["model_weights"][layer]
        return [group[name][()] for name in group.attrs["weight_names"]]


def lasagne_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, strides, pads) -> np.ndarray:
    """Lasagne Conv2DLayer on (N, C, H, W): explicit pads, true convolution, stride, bias."""
    x = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    return np.stack([np.stack([sum(scipy.signal.convolve(x[n, i], weight[o, i], mode="valid")
                                   for i in range(x.shape[1]))[::strides[0], ::strides[1]] + bias[o]
                               for o in range(weight.shape[0])]) for n in range(x.shape[0])])


def lasagne_batchnorm(x: np.ndarray, beta, gamma, mean, inv_std) -> np.ndarray:
    """Lasagne BatchNormLayer at test time, per channel of (N, C, H, W)."""
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) * (gamma * inv_std).reshape(shape) + beta.reshape(shape)


def bn_cnn_in_lasagne(arrays: dict[str, np.ndarray], spec: dict, x_nhwc: np.ndarray) -> np.ndarray:
    """fixtures/theano_target's network (conv, batch norm, relu, strided 'same' conv, flatten, dense) in numpy."""
    layers = {layer["name"]: layer for layer in spec["layers"]}
    h = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)).astype(np.float64)
    h = lasagne_conv(h, arrays["conv.W"], arrays["conv.b"], layers["conv"]["strides"], layers["conv"]["pads"])
    h = lasagne_batchnorm(h, arrays["bn.beta"], arrays["bn.gamma"], arrays["bn.mean"], arrays["bn.inv_std"])
    h = np.maximum(h, 0)
    h = lasagne_conv(h, arrays["conv_s2.W"], arrays["conv_s2.b"], layers["conv_s2"]["strides"],
                     layers["conv_s2"]["pads"])
    return h.reshape(h.shape[0], -1) @ arrays["dense.W"] + arrays["dense.b"]


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_written_conv_and_bias_convolve_like_theano(run_cli, tmp_path):
    """scipy's true convolution of the written W, plus the written b, is TensorFlow's conv2d + bias_add
    of the Keras kernel and bias."""
    arrays, _ = written(run_cli, tmp_path, H5)
    kernel, bias = keras_weights(H5, "conv_a")
    assert np.abs(bias).min() > 1e-3  # a zeroed bias cannot pass unseen
    x = np.random.RandomState(9).uniform(-1, 1, (2, 9, 11, 3)).astype(np.float32)
    expected = tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "VALID"), bias).numpy()  # (N, 7, 10, 4)
    got = lasagne_conv(x.transpose(0, 3, 1, 2), arrays["conv_a.W"], arrays["conv_a.b"], (1, 1), [[0, 0], [0, 0]])
    assert_close(got.transpose(0, 2, 3, 1), expected)


def test_written_dense_after_flatten_matches_keras(run_cli, tmp_path):
    """Lasagne flattens (C, H, W) and multiplies by W (num_inputs, num_units); Keras flattened (H, W, C)."""
    arrays, _ = written(run_cli, tmp_path, H5)
    kernel, bias = keras_weights(H5, "dense")
    assert arrays["dense.W"].shape == (20, 6)  # (num_inputs, num_units)
    features = np.random.RandomState(10).uniform(-1, 1, (3, 2, 2, 5)).astype(np.float32)  # (N, H, W, C)
    expected = tf.nn.bias_add(tf.matmul(features.reshape(3, -1), kernel), bias).numpy()
    got = features.transpose(0, 3, 1, 2).reshape(3, -1) @ arrays["dense.W"] + arrays["dense.b"]
    assert_close(got, expected)


def test_written_batchnorm_follows_lasagne_formula(run_cli, tmp_path):
    """beta, gamma, mean, inv_std through Lasagne's formula give Keras's own BatchNormalization (inference);
    epsilon (0.25) is large next to the variances, so an inv_std without it is far off."""
    import keras
    arrays, spec = written(run_cli, tmp_path, BN_CNN)
    layer = keras.models.load_model(BN_CNN).get_layer("bn")
    assert layer.epsilon == 0.25 and {"name": "bn", "epsilon": 0.25}.items() <= next(
        entry for entry in spec["layers"] if entry["name"] == "bn").items()
    x = np.random.RandomState(11).uniform(-2, 2, (2, 7, 7, 4)).astype(np.float32)  # (N, H, W, C)
    expected = np.asarray(layer(x, training=False))
    got = lasagne_batchnorm(x.transpose(0, 3, 1, 2), arrays["bn.beta"], arrays["bn.gamma"], arrays["bn.mean"],
                            arrays["bn.inv_std"])
    assert_close(got.transpose(0, 2, 3, 1), expected)


def test_written_pickle_reproduces_the_recorded_theano_run(run_cli, tmp_path):
    """fixtures/theano_target/run_theano.py ran a written pickle in real Theano 1.0.5 (conv2d with
    filter_flip=True, Lasagne's batch-norm formula) and recorded its output.  The numpy formulas here give
    that output on the very pickle Theano ran, and on the arrays weightport writes today."""
    x = np.load(fixture_path("theano_target", "bn_cnn.input.npy"))
    theano_output = np.load(fixture_path("theano_target", "bn_cnn.theano_output.npy"))
    ran = pickled_arrays(fixture_path("theano_target", "bn_cnn.pkl"), fixture_path("theano_target", "bn_cnn.spec.json"))
    assert_close(bn_cnn_in_lasagne(*ran, x), theano_output)  # the formulas are Theano's
    assert_close(bn_cnn_in_lasagne(*written(run_cli, tmp_path, BN_CNN), x), theano_output)
    assert_close(theano_output, np.load(fixture_path("theano_target", "bn_cnn.output.npy")))  # and Keras's


def test_written_pickle_loads_in_numpy_1(run_cli, tmp_path):
    """numpy 2 pickles arrays through numpy._core, which numpy < 1.26 (every Theano install) cannot import:
    the written pickle names only what numpy 1.x defines (the Theano 1.0.5 run loaded it with numpy 1.23.5)."""
    out = tmp_path / "lasagne.pkl"
    assert run_cli("convert", H5, "-o", out, "--to", "theano")[0] == 0
    names = {arg for op, arg, _ in pickletools.genops(out.read_bytes()) if op.name in ("GLOBAL", "STACK_GLOBAL")}
    assert names == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype", "_codecs encode"}


def test_theano_file_reads_back_and_reproduces_keras(run_cli, tmp_path):
    out = tmp_path / "lasagne.pkl"
    assert run_cli("convert", H5, "-o", out, "--to", "theano")[0] == 0
    model = load(str(out))  # finds lasagne.spec.json beside it
    module = CanonicalModule(model).eval()
    module.load_state_dict(canonical_state_dict(model), strict=True)
    x = np.load(fixture_path("keras3", "cnn_flatten_dense.input.npy")).transpose(0, 3, 1, 2)
    with torch.no_grad():
        got = module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    np.testing.assert_allclose(got, np.load(fixture_path("keras3", "cnn_flatten_dense.output.npy")), rtol=1e-4, atol=1e-5)


def test_theano_to_theano_round_trip_is_bit_identical_for_kernels(run_cli, tmp_path):
    source = fixture_path("theano", "theano_cnn.values.p2.pkl")
    out = tmp_path / "again.pkl"
    assert run_cli("convert", source, "-o", out, "--to", "theano")[0] == 0
    before = read_arrays(source)
    after = [a for _, a in read_arrays(str(out))]
    original = [a for _, a in read_arrays(source)]
    spec_in = json.load(open(fixture_path("theano", "theano_cnn.spec.json")))["arrays"]
    spec_out = json.loads((tmp_path / "again.spec.json").read_text())["arrays"]
    for name in ("conv1.W", "dense.W", "conv1.b"):
        a, b = original[spec_in.index(name)], after[spec_out.index(name)]
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    # conv2 was a correlation kernel (filter_flip=False); for Theano's default conv2d it is now flipped
    np.testing.assert_array_equal(after[spec_out.index("conv2.W")], original[spec_in.index("conv2.W")][:, :, ::-1, ::-1])
    assert before


# -- transposed convolutions and PReLU (issue 17): Lasagne's TransposedConv2DLayer and ParametricRectifierLayer
def onnx_single_node(path, node, inits: dict[str, np.ndarray], in_shape, out_shape) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def onnxruntime_y(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def lasagne_transposed_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride, crop,
                            flip_filters: bool = False) -> np.ndarray:
    """Lasagne TransposedConv2DLayer on (N, C, H, W), W of shape (C, num_filters, rows, cols): the input
    gradient of Theano's conv2d(filter_flip=not flip_filters), i.e. every input sample spread by the stride,
    fully correlated with W (flip_filters=False, the default) or fully convolved (flip_filters=True), summed
    over input channels, then ``crop`` cut from both ends of each axis, plus ``b``."""
    spread = np.zeros(x.shape[:2] + tuple((n - 1) * s + 1 for n, s in zip(x.shape[2:], stride)))
    spread[:, :, ::stride[0], ::stride[1]] = x
    slide = scipy.signal.convolve if flip_filters else scipy.signal.correlate
    full = np.stack([np.stack([sum(slide(spread[n, c], weight[c, j], mode="full") for c in range(x.shape[1]))
                               for j in range(weight.shape[1])]) for n in range(x.shape[0])])
    (top, left) = crop
    cropped = full[:, :, top:full.shape[2] - top, left:full.shape[3] - left]
    return cropped + bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("semantics,flip_filters", [(None, False), ("correlation", True)])
def test_written_transposed_conv_computes_like_lasagne(semantics, flip_filters, run_cli, tmp_path):
    """ConvTranspose (stride 2 by 1, crop 1 by 0, a 3x2 kernel, bias) written for TransposedConv2DLayer: its
    default flip_filters=False takes the kernel flipped, --target-semantics correlation for flip_filters=True
    takes it as ONNX stores it; Lasagne's formula on the written arrays gives onnxruntime's output."""
    from onnx import helper
    rng = np.random.default_rng(31)
    weight = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 1], pads=[1, 0, 1, 0])
    path = onnx_single_node(tmp_path / "deconv.onnx", node, {"w": weight, "b": bias}, ["n", 3, 4, 5], ["n", 2, 7, 6])
    out = tmp_path / "lasagne.pkl"
    extra = ("--target-semantics", semantics) if semantics else ()
    code, _, err = run_cli("convert", path, "-o", out, "--to", "theano", *extra)
    assert code == 0, err
    arrays, spec = pickled_arrays(str(out), str(tmp_path / "lasagne.spec.json"))
    entry = next(layer for layer in spec["layers"] if layer["kind"] == "conv_transpose")
    assert entry["crop"] == [1, 0] and entry["strides"] == [2, 1]
    name = entry["name"]
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    got = lasagne_transposed_conv(x.astype(np.float64), arrays[f"{name}.W"], arrays[f"{name}.b"], entry["strides"],
                                  entry["crop"], flip_filters)
    np.testing.assert_allclose(got, onnxruntime_y(path, x), rtol=0, atol=1e-5)
    wrong = lasagne_transposed_conv(x.astype(np.float64), arrays[f"{name}.W"], arrays[f"{name}.b"],
                                    entry["strides"], entry["crop"], not flip_filters)
    assert np.abs(wrong - onnxruntime_y(path, x)).max() > 1e-2  # the flag matters: the kernel is not symmetric


def test_a_transposed_conv_lasagne_cannot_crop_is_refused_in_one_line(run_cli, tmp_path):
    from onnx import helper
    rng = np.random.default_rng(32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[0, 0, 1, 1])
    path = onnx_single_node(tmp_path / "uneven.onnx", node, {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32)},
                            [1, 3, 4, 4], [1, 2, 8, 8])
    code, _, err = run_cli("convert", path, "-o", tmp_path / "out.pkl", "--to", "theano")
    assert code == 2 and "uneven crops" in err and err.count("\n") == 1 and not (tmp_path / "out.pkl").exists()


def lasagne_prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """ParametricRectifierLayer: max(x, 0) + alpha * min(x, 0), alpha over the axes not shared (channels
    first: (C,) broadcast on axis 1 for shared_axes='auto', (C, H, W) on every axis but the batch's)."""
    alpha = alpha.reshape((1,) + alpha.shape + (1,) * (x.ndim - 1 - alpha.ndim))
    return np.maximum(x, 0) + alpha * np.minimum(x, 0)


def test_written_prelu_slopes_compute_like_lasagne(run_cli, tmp_path):
    """facenet's real PNet (legacy torch.save, --arch its own module): each PReLU's alpha in the pickle, run
    through Lasagne's formula, gives what torch.nn.PReLU holding the checkpoint's weights gives."""
    real = fixture_path("real", "torch")
    out = tmp_path / "pnet.pkl"
    code, _, err = run_cli("convert", f"{real}/facenet_pnet.pt", "-o", out, "--to", "theano",
                           "--arch", f"{real}/facenet_mtcnn.py:PNet", "--input-shape", "3,12,12")
    assert code == 0, err
    arrays, spec = pickled_arrays(str(out), str(tmp_path / "pnet.spec.json"))
    state = torch.load(f"{real}/facenet_pnet.pt", map_location="cpu", weights_only=True)
    x = np.random.default_rng(33).standard_normal((2, 32, 5, 5)).astype(np.float32)
    for name in ("prelu1", "prelu2", "prelu3"):
        module = torch.nn.PReLU(state[f"{name}.weight"].numel())
        module.load_state_dict({"weight": state[f"{name}.weight"]})
        channels = module.weight.numel()
        with torch.no_grad():
            expected = module(torch.from_numpy(x[:, :channels].copy())).numpy()
        got = lasagne_prelu(x[:, :channels].astype(np.float64), arrays[f"{name}.alpha"])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_per_element_prelu_slope_is_lasagnes_unshared_alpha(run_cli, tmp_path):
    """ONNX PRelu with one slope per element (3, 4, 5): alpha for ParametricRectifierLayer(shared_axes=0),
    checked against onnxruntime (a transposed or channels-last alpha would fail: every axis differs)."""
    from onnx import helper
    slope = np.random.default_rng(34).uniform(0.05, 0.9, (3, 4, 5)).astype(np.float32)
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    path = onnx_single_node(tmp_path / "prelu.onnx", node, {"slope": slope}, ["n", 3, 4, 5], ["n", 3, 4, 5])
    out = tmp_path / "lasagne.pkl"
    code, _, err = run_cli("convert", path, "-o", out, "--to", "theano")
    assert code == 0, err
    arrays, spec = pickled_arrays(str(out), str(tmp_path / "lasagne.spec.json"))
    entry = next(layer for layer in spec["layers"] if layer["kind"] == "prelu")
    x = np.random.default_rng(35).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(lasagne_prelu(x.astype(np.float64), arrays[f"{entry['name']}.alpha"]),
                               onnxruntime_y(path, x), rtol=0, atol=1e-6)
