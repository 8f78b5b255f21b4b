"""NumPy .npz target: canonical arrays plus a JSON sidecar; the scipy preset (convolution semantics)
reproduces TensorFlow's conv output through scipy.signal.convolve2d."""

from __future__ import annotations

import json

import h5py
import numpy as np
import scipy.signal
import tensorflow as tf

from tests.conftest import fixture_path

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")


def tf_conv_a(x_nhwc: np.ndarray) -> np.ndarray:
    with h5py.File(H5) as f:
        kernel = f["model_weights/conv_a/conv_a/kernel"][()]
        bias = f["model_weights/conv_a/conv_a/bias"][()]
    return (tf.nn.conv2d(x_nhwc, kernel, 1, "VALID").numpy() + bias)[0]  # (7, 10, 4)


def scipy_conv(x_chw: np.ndarray, weight: np.ndarray, bias: np.ndarray, op) -> np.ndarray:
    return np.stack([sum(op(x_chw[i], weight[o, i], mode="valid") for i in range(weight.shape[1])) + bias[o]
                     for o in range(weight.shape[0])], axis=-1)


def test_scipy_preset_reproduces_tensorflow_with_convolve2d(run_cli, tmp_path):
    out = tmp_path / "scipy.npz"
    code, _, err = run_cli("convert", H5, "-o", out, "--to", "npz", "--target-semantics", "convolution")
    assert code == 0, err
    arrays = np.load(out, allow_pickle=False)
    sidecar = json.loads((tmp_path / "scipy.npz.json").read_text())
    assert sidecar["arrays"]["conv_a.weight"]["layout"] == "OIHW"
    assert sidecar["arrays"]["conv_a.weight"]["semantics"] == "convolution"
    x = np.random.RandomState(3).uniform(-1, 1, (1, 9, 11, 3)).astype(np.float32)
    expected = tf_conv_a(x)
    got = scipy_conv(x[0].transpose(2, 0, 1), arrays["conv_a.weight"], arrays["conv_a.bias"], scipy.signal.convolve2d)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    wrong = scipy_conv(x[0].transpose(2, 0, 1), arrays["conv_a.weight"], arrays["conv_a.bias"], scipy.signal.correlate2d)
    assert np.abs(wrong - expected).max() > 1e-2


def test_default_npz_is_correlation_and_matches_correlate2d(run_cli, tmp_path):
    out = tmp_path / "plain.npz"
    assert run_cli("convert", H5, "-o", out)[0] == 0
    arrays = np.load(out, allow_pickle=False)
    x = np.random.RandomState(4).uniform(-1, 1, (1, 9, 11, 3)).astype(np.float32)
    got = scipy_conv(x[0].transpose(2, 0, 1), arrays["conv_a.weight"], arrays["conv_a.bias"], scipy.signal.correlate2d)
    np.testing.assert_allclose(got, tf_conv_a(x), rtol=1e-5, atol=1e-5)
    code, _, err = run_cli("convert", H5, "-o", out)
    assert code == 2 and "--force" in err


DEPTHWISE = fixture_path("keras_theano", "k2_depthwise_single.h5")


def depthwise_by_scipy(x_nhwc: np.ndarray, weight: np.ndarray, bias: np.ndarray, op) -> np.ndarray:
    """A depthwise conv from an ``(i m) 1 h w`` kernel with scipy: output channel ``o`` reads input channel
    ``o // m`` (Keras's channel order), stride 1, 'valid'; returns NHWC."""
    multiplier = weight.shape[0] // x_nhwc.shape[-1]
    return np.stack([np.stack([op(sample[:, :, o // multiplier], weight[o, 0], mode="valid") + bias[o]
                               for o in range(weight.shape[0])], axis=-1) for sample in x_nhwc])


def test_depthwise_kernels_take_the_scipy_preset_and_reproduce_keras(run_cli, tmp_path):
    """A depthwise kernel (``(i m) 1 h w``, multiplier not visible in the shape) flips into convolution
    semantics; scipy's convolve2d on it reproduces the output real Keras 2.3.1 on Theano recorded."""
    out = tmp_path / "dw.npz"
    code, _, err = run_cli("convert", DEPTHWISE, "-o", out, "--to", "npz", "--target-semantics", "convolution")
    assert code == 0, err
    arrays = np.load(out, allow_pickle=False)
    x = np.load(fixture_path("keras_theano", "k2_depthwise_single.input.npy"))
    expected = np.load(fixture_path("keras_theano", "k2_depthwise_single.output.npy"))
    got = depthwise_by_scipy(x, arrays["conv.weight"], arrays["conv.bias"], scipy.signal.convolve2d)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    flipped = depthwise_by_scipy(x, arrays["conv.weight"], arrays["conv.bias"], scipy.signal.correlate2d)
    assert np.abs(flipped - expected).max() > 1e-2
