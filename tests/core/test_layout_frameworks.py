"""Each framework layout in weightport.core.layout proved against the real ops: tf.nn, keras layers,
torch.nn.functional and scipy.signal. Kernels are seeded, asymmetric and non-square (odd and even
sizes); every test also checks that the wrong conversion (no flip, swapped axes, no gate reorder)
does not match, so it would fail if a flip, transpose or reorder were wrong."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
import torch
import torch.nn.functional as F

from weightport.core.layout import CANONICAL_PATTERNS, CONVOLUTION, CORRELATION, Layout, relayout, reorder_blocks
from weightport.formats.keras.patterns import KERAS_PATTERNS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RNG = np.random.default_rng(2026)


def rand(*shape):
    return RNG.uniform(-1, 1, shape).astype(np.float32)


def channels_first(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def channels_last(y):
    return np.moveaxis(y, 1, -1)


ULPS = 8  # float32 units in the last place of the largest expected value


def close(a, b):
    """Equal to within ULPS float32 ulps of the output's scale (values of at least 1 count as 1).

    Each output is a sum of at most 105 float32 products in [-1, 1] that TensorFlow, Keras, scipy and
    torch add in different orders; the two orders round apart by a few ulps of the sum's scale, never
    more. Measured (seeded inputs): at most 7.2e-7 on outputs up to 7 (about 1.7 ulps of the scale);
    most layouts agree exactly (0.0). A wrong layout is off by 0.3 to 9. Eight ulps leaves room for
    another CPU's summation order (AVX2 / AVX-512 kernels) and nothing else."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.abs(b).max()))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=ULPS * np.finfo(np.float32).eps * scale))


CONV_CASES = [  # rank, kernel spatial, input spatial, strides, dilations
    (1, (3,), (11,), (1,), (1,)),
    (1, (4,), (12,), (2,), (1,)),
    (2, (3, 2), (9, 11), (1, 1), (1, 1)),
    (2, (2, 3), (10, 9), (2, 1), (1, 1)),
    (2, (4, 3), (12, 10), (1, 1), (2, 1)),   # TensorFlow refuses strides > 1 with dilations > 1
    (3, (2, 3, 2), (5, 7, 6), (1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("rank,kernel,spatial,strides,dilations", CONV_CASES)
def test_keras_conv_kernel_to_torch(rank, kernel, spatial, strides, dilations):
    role = f"conv{rank}d"
    w_keras = rand(*kernel, 3, 5)
    x = rand(2, *spatial, 3)
    expected = tf.nn.convolution(x, w_keras, strides=strides, dilations=dilations, padding="VALID").numpy()
    w_torch = relayout(w_keras, Layout(KERAS_PATTERNS[role], CORRELATION), Layout(CANONICAL_PATTERNS[role], CORRELATION))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    got = conv(torch.from_numpy(channels_first(x)), torch.from_numpy(w_torch), stride=strides, dilation=dilations)
    assert close(channels_last(got.numpy()), expected)
    flipped = relayout(w_keras, Layout(KERAS_PATTERNS[role], CONVOLUTION), Layout(CANONICAL_PATTERNS[role], CORRELATION))
    wrong = conv(torch.from_numpy(channels_first(x)), torch.from_numpy(flipped), stride=strides, dilation=dilations)
    assert not close(channels_last(wrong.numpy()), expected)


@pytest.mark.parametrize("groups", [2, 3])
def test_grouped_conv_kernel_to_torch(groups):
    import keras
    layer = keras.layers.Conv2D(6, (3, 2), groups=groups)
    x = rand(2, 8, 7, 6)
    layer.build(x.shape)
    w_keras = rand(3, 2, 6 // groups, 6)
    bias = rand(6)
    layer.set_weights([w_keras, bias])
    expected = np.asarray(layer(x))
    w_torch = relayout(w_keras, Layout("h w i o"), Layout("o i h w"))
    got = F.conv2d(torch.from_numpy(channels_first(x)), torch.from_numpy(w_torch), torch.from_numpy(bias), groups=groups)
    assert close(channels_last(got.numpy()), expected)
    swapped = relayout(w_keras, Layout("h w i o"), Layout("i o h w")).reshape(w_torch.shape)  # in/out confused
    wrong = F.conv2d(torch.from_numpy(channels_first(x)), torch.from_numpy(np.ascontiguousarray(swapped)),
                     torch.from_numpy(bias), groups=groups)
    assert not close(channels_last(wrong.numpy()), expected)


@pytest.mark.parametrize("kernel,strides,spatial", [((3, 2), (2, 2), (5, 4)), ((4, 3), (2, 1), (4, 5)),
                                                    ((2, 2), (1, 1), (3, 6))])
def test_keras_conv_transpose_kernel_to_torch(kernel, strides, spatial):
    w_keras = rand(*kernel, 4, 3)  # h w o i
    x = rand(2, *spatial, 3)
    out_spatial = [(n - 1) * s + k for n, s, k in zip(spatial, strides, kernel)]
    expected = tf.nn.conv2d_transpose(x, w_keras, [2, *out_spatial, 4], strides, padding="VALID").numpy()
    w_torch = relayout(w_keras, Layout(KERAS_PATTERNS["conv_transpose2d"]), Layout(CANONICAL_PATTERNS["conv_transpose2d"]))
    got = F.conv_transpose2d(torch.from_numpy(channels_first(x)), torch.from_numpy(w_torch), stride=strides)
    assert close(channels_last(got.numpy()), expected)
    flipped = relayout(w_keras, Layout("h w o i", CONVOLUTION), Layout("i o h w", CORRELATION))
    wrong = F.conv_transpose2d(torch.from_numpy(channels_first(x)), torch.from_numpy(flipped), stride=strides)
    assert not close(channels_last(wrong.numpy()), expected)


def test_keras_conv1d_and_3d_transpose_kernels_to_torch():
    w1 = rand(3, 4, 2)  # w o i
    x1 = rand(2, 6, 2)
    expected = tf.nn.conv1d_transpose(x1, w1, [2, 13, 4], 2, padding="VALID").numpy()
    got = F.conv_transpose1d(torch.from_numpy(channels_first(x1)),
                             torch.from_numpy(relayout(w1, Layout("w o i"), Layout("i o w"))), stride=2)
    assert close(channels_last(got.numpy()), expected)
    w3 = rand(2, 3, 2, 4, 2)  # d h w o i
    x3 = rand(1, 3, 4, 3, 2)
    expected = tf.nn.conv3d_transpose(x3, w3, [1, 4, 6, 4, 4], [1, 1, 1, 1, 1], padding="VALID").numpy()
    got = F.conv_transpose3d(torch.from_numpy(channels_first(x3)),
                             torch.from_numpy(relayout(w3, Layout("d h w o i"), Layout("i o d h w"))))
    assert close(channels_last(got.numpy()), expected)


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_keras_depthwise_kernel_to_torch(multiplier):
    w_keras = rand(3, 2, 4, multiplier)  # h w i m
    x = rand(2, 9, 8, 4)
    expected = tf.nn.depthwise_conv2d(x, w_keras, [1, 1, 1, 1], "VALID").numpy()
    w_torch = relayout(w_keras, Layout(KERAS_PATTERNS["depthwise2d"]), Layout(CANONICAL_PATTERNS["depthwise2d"]))
    got = F.conv2d(torch.from_numpy(channels_first(x)), torch.from_numpy(w_torch), groups=4)
    assert close(channels_last(got.numpy()), expected)
    if multiplier > 1:  # merging (m i) instead of (i m) interleaves channels wrongly
        wrong_w = relayout(w_keras, Layout("h w i m"), Layout("(m i) 1 h w"))
        wrong = F.conv2d(torch.from_numpy(channels_first(x)), torch.from_numpy(wrong_w), groups=4)
        assert not close(channels_last(wrong.numpy()), expected)


def test_keras_separable_kernels_to_torch():
    import keras
    layer = keras.layers.SeparableConv2D(5, (2, 3), depth_multiplier=2)
    x = rand(2, 7, 8, 3)
    layer.build(x.shape)
    depthwise, pointwise, bias = rand(2, 3, 3, 2), rand(1, 1, 6, 5), rand(5)
    layer.set_weights([depthwise, pointwise, bias])
    expected = np.asarray(layer(x))
    dw = relayout(depthwise, Layout(KERAS_PATTERNS["depthwise2d"]), Layout(CANONICAL_PATTERNS["depthwise2d"]))
    pw = relayout(pointwise, Layout(KERAS_PATTERNS["pointwise2d"]), Layout(CANONICAL_PATTERNS["pointwise2d"]))
    mid = F.conv2d(torch.from_numpy(channels_first(x)), torch.from_numpy(dw), groups=3)
    got = F.conv2d(mid, torch.from_numpy(pw), torch.from_numpy(bias))
    assert close(channels_last(got.numpy()), expected)


def test_theano_style_convolution_kernel_matches_scipy_convolve():
    """A kernel for true convolution (Theano, scipy) becomes a PyTorch kernel by a 180-degree flip."""
    w_theano = rand(4, 3, 3, 2)  # o i h w, convolution
    x = rand(1, 3, 9, 7)
    expected = np.stack([sum(scipy.signal.convolve2d(x[0, i], w_theano[o, i], mode="valid") for i in range(3))
                         for o in range(4)])
    w_torch = relayout(w_theano, Layout("o i h w", CONVOLUTION), Layout("o i h w", CORRELATION))
    got = F.conv2d(torch.from_numpy(x), torch.from_numpy(w_torch)).numpy()[0]
    assert close(got, expected)
    unflipped = F.conv2d(torch.from_numpy(x), torch.from_numpy(w_theano)).numpy()[0]
    assert not close(unflipped, expected)
    correlated = np.stack([sum(scipy.signal.correlate2d(x[0, i], w_theano[o, i], mode="valid") for i in range(3))
                           for o in range(4)])
    assert close(unflipped, correlated)


def test_3d_convolution_kernel_matches_scipy_convolve():
    w = rand(2, 2, 2, 3, 2)  # o i d h w, convolution
    x = rand(1, 2, 4, 6, 5)
    expected = np.stack([sum(scipy.signal.convolve(x[0, i], w[o, i], mode="valid") for i in range(2)) for o in range(2)])
    w_torch = relayout(w, Layout("o i d h w", CONVOLUTION), Layout("o i d h w", CORRELATION))
    assert close(F.conv3d(torch.from_numpy(x), torch.from_numpy(w_torch)).numpy()[0], expected)


def test_dense_after_flatten_rows():
    import keras
    model = keras.Sequential([keras.Input((5, 7, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    kernel, bias = rand(105, 4), rand(4)
    model.layers[-1].set_weights([kernel, bias])
    x = rand(2, 5, 7, 3)
    expected = model.predict(x, verbose=0)
    known = {"h": 5, "w": 7, "c": 3}
    weight = relayout(kernel, Layout("(h w c) o"), Layout("o (c h w)"), known)
    got = F.linear(torch.from_numpy(channels_first(x)).flatten(1), torch.from_numpy(weight), torch.from_numpy(bias))
    assert close(got.numpy(), expected)
    naive = F.linear(torch.from_numpy(channels_first(x)).flatten(1), torch.from_numpy(np.ascontiguousarray(kernel.T)),
                     torch.from_numpy(bias))
    assert not close(naive.numpy(), expected)


def test_gru_gate_reorder_against_torch():
    import keras
    units, features = 3, 4
    gru = keras.layers.GRU(units, return_sequences=True, reset_after=True)
    x = rand(2, 5, features)
    gru.build(x.shape)
    kernel, recurrent, bias = rand(features, 3 * units), rand(units, 3 * units), rand(2, 3 * units)
    gru.set_weights([kernel, recurrent, bias])
    expected = np.asarray(gru(x))

    def torch_gru(order):
        net = torch.nn.GRU(features, units, batch_first=True)
        state = {
            "weight_ih_l0": reorder_blocks(relayout(kernel, Layout("i o"), Layout("o i")), 0, "zrh", order),
            "weight_hh_l0": reorder_blocks(relayout(recurrent, Layout("i o"), Layout("o i")), 0, "zrh", order),
            "bias_ih_l0": reorder_blocks(bias[0], 0, "zrh", order),
            "bias_hh_l0": reorder_blocks(bias[1], 0, "zrh", order),
        }
        net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        with torch.no_grad():
            return net(torch.from_numpy(x))[0].numpy()
    assert close(torch_gru("rzh"), expected)
    assert not close(torch_gru("zrh"), expected)


def test_lstm_gate_order_against_torch():
    import keras
    units, features = 3, 2
    lstm = keras.layers.LSTM(units, return_sequences=True)
    x = rand(2, 6, features)
    lstm.build(x.shape)
    kernel, recurrent, bias = rand(features, 4 * units), rand(units, 4 * units), rand(4 * units)
    lstm.set_weights([kernel, recurrent, bias])
    expected = np.asarray(lstm(x))

    def torch_lstm(order):
        net = torch.nn.LSTM(features, units, batch_first=True)
        state = {"weight_ih_l0": reorder_blocks(relayout(kernel, Layout("i o"), Layout("o i")), 0, "ifco", order),
                 "weight_hh_l0": reorder_blocks(relayout(recurrent, Layout("i o"), Layout("o i")), 0, "ifco", order),
                 "bias_ih_l0": reorder_blocks(bias, 0, "ifco", order), "bias_hh_l0": np.zeros(4 * units, np.float32)}
        net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        with torch.no_grad():
            return net(torch.from_numpy(x))[0].numpy()
    assert close(torch_lstm("ifco"), expected)  # Keras i,f,c,o is PyTorch's i,f,g,o
    assert not close(torch_lstm("icfo"), expected)
