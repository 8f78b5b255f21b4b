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
