"""Keras/TensorFlow as the oracle of a Keras layer whose stored kernel is a correlation kernel (Keras on
TensorFlow, and Keras on Theano for depthwise and separable kernels, see
fixtures/keras_theano/RULES.md), fed the arrays exactly as the file stores them:

* conv: ``tf.nn.convolution`` (one group at a time, as TensorFlow's CPU kernels run grouped convs);
  depthwise: ``tf.nn.depthwise_conv2d`` (a 1-D one with a unit row, as Keras's ``DepthwiseConv1D``);
  separable: ``tf.nn.separable_conv2d`` (the depthwise kernel, then the pointwise one; a 1-D one with a
  unit row, as Keras's ``separable_conv1d``); transposed conv: ``tf.nn.conv_transpose`` with Keras's
  ``(spatial..., out, in)`` kernel.  Valid padding, no output padding (``(n - 1) * s + (k - 1) * d + 1``
  samples per axis, as torch's ``conv_transpose`` with ``padding=0, output_padding=0``).
* BatchNormalization: Keras's own layer at inference with the stored gamma, beta, moving mean and
  variance and the file's epsilon (Keras 1's ``running_std`` holds the variance, and Keras 1 used it so:
  fixtures/keras_theano/RULES.md).
* LayerNormalization: Keras's own layer over the features with the stored gamma and beta and the file's epsilon.
* Embedding: Keras's own layer with the stored ``embeddings``.
* PReLU: Keras's formula ``relu(x) - alpha * relu(-x)`` with the stored ``alpha``, its axes found by name.
* LSTM/GRU: Keras's own layers with the stored ``kernel``, ``recurrent_kernel`` and ``bias`` and the
  file's activations (CuDNNLSTM/CuDNNGRU arrays first put in Keras's LSTM/GRU form by Keras 2's own legacy
  conversion, :func:`keras_from_cudnn`) (``go_backwards`` and ``Bidirectional`` too, with their sequences returned in
  Keras's order: a backwards layer's outputs in the order it read the steps, a bidirectional layer's
  backward half re-reversed, forward and backward halves concatenated).

Kernels are put in TensorFlow's ``(spatial..., in, out)`` order by the axis names of their stored pattern
(``np.transpose`` in :func:`weightport.formats.numpy.oracle.arrange`), never through weightport's layout
code.  tensorflow and keras are imported only when an oracle runs; everything runs in the dtype of the
input.  See :mod:`weightport.core.oracle` for the contract.
"""

from __future__ import annotations


import numpy as np

from weightport.core.oracle import LayerCase
from weightport.formats.keras.runtime import keras as keras_module, tensorflow
from weightport.formats.numpy.oracle import arrange, depth_multiplier


def tf_kernel(case: LayerCase, param: str, last: tuple[str, str]) -> np.ndarray:
    """The stored kernel ``param`` as TensorFlow takes it: spatial axes (d, h, w), then ``last``."""
    kernel = arrange(case.stored[param], case.stored_layout[param], last, depth_multiplier(case))
    return np.moveaxis(kernel, (0, 1), (-2, -1))


def source_conv(case: LayerCase, x_first: np.ndarray) -> np.ndarray:
    """TensorFlow's conv, depthwise, separable or transposed conv output with the stored (correlation)
    kernels, for a channels-first input (valid padding)."""
    tf = tensorflow()
    layer, a = case.layer, case.layer.attrs
    x = np.moveaxis(x_first, 1, -1)
    strides, dilations, groups = list(a["strides"]), list(a["dilations"]), int(a.get("groups", 1))
    if layer.kind == "conv":
        kernel = tf_kernel(case, "weight", ("i", "o"))
        cin, cout = x.shape[-1] // groups, kernel.shape[-1] // groups
        y = np.concatenate([
            tf.nn.convolution(x[..., g * cin:(g + 1) * cin], kernel[..., g * cout:(g + 1) * cout],
                              strides=strides, padding="VALID", dilations=dilations).numpy()
            for g in range(groups)], axis=-1)
    elif layer.kind == "conv_transpose":
        kernel = tf_kernel(case, "weight", ("o", "i"))
        cin, cout = x.shape[-1] // groups, kernel.shape[-2]
        size = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(x.shape[1:-1], strides, kernel.shape, dilations)]
        y = np.concatenate([
            tf.nn.conv_transpose(x[..., g * cin:(g + 1) * cin], kernel[..., g * cin:(g + 1) * cin],
                                 [x.shape[0], *size, cout], strides, "VALID", dilations=dilations).numpy()
            for g in range(groups)], axis=-1)
    elif layer.kind in ("depthwise", "separable"):
        y = depthwise_or_separable(tf, case, x, strides, dilations)
    else:
        raise NotImplementedError(f"the TensorFlow check does not run {layer.kind} layers")
    bias = case.stored.get("pointwise.bias" if layer.kind == "separable" else "bias")
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return np.moveaxis(y, -1, 1)


def depthwise_or_separable(tf, case: LayerCase, x: np.ndarray, strides: list[int], dilations: list[int]) -> np.ndarray:
    """``tf.nn.depthwise_conv2d`` / ``tf.nn.separable_conv2d`` on a channels-last ``x``; a 1-D layer runs as a
    2-D one with a unit row, as Keras runs it."""
    separable = case.layer.kind == "separable"
    depthwise = tf_kernel(case, "depthwise.weight" if separable else "weight", ("i", "m"))
    rank = x.ndim - 2
    if rank == 1:
        x, depthwise = x[:, np.newaxis], depthwise[np.newaxis]
        strides, dilations = [1, *strides], [1, *dilations]
    elif rank != 2:
        raise NotImplementedError(f"TensorFlow has no {rank}-D depthwise convolution")
    if separable:
        pointwise = arrange(case.stored["pointwise.weight"], case.stored_layout["pointwise.weight"], ("i", "o"))
        y = tf.nn.separable_conv2d(x, depthwise, pointwise[np.newaxis, np.newaxis], [1, *strides, 1], "VALID",
                                   dilations=dilations).numpy()
    else:
        y = tf.nn.depthwise_conv2d(x, depthwise, [1, *strides, 1], "VALID", dilations=dilations).numpy()
    return y[:, 0] if rank == 1 else y


def source_batchnorm(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's BatchNormalization at inference over axis 1 of the canonical input, with the stored vectors."""
    keras = keras_module()
    stored = case.stored
    bn = keras.layers.BatchNormalization(axis=1, epsilon=float(case.layer.attrs["epsilon"]), dtype=x.dtype.name)
    bn.build(x.shape)
    bn.set_weights([stored[param].astype(x.dtype) for param in ("weight", "bias", "running_mean", "running_var")])
    return np.asarray(bn(x, training=False))


def source_layernorm(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's LayerNormalization over the last axis of ``x`` (batch, steps, features), with the stored gamma
    and beta (an absent one stored as its identity, ones or zeros) and the file's epsilon."""
    keras = keras_module()
    norm = keras.layers.LayerNormalization(axis=-1, epsilon=float(case.layer.attrs["epsilon"]), dtype=x.dtype.name)
    norm.build(x.shape)
    norm.set_weights([case.stored[param].astype(x.dtype) for param in ("weight", "bias")])
    return np.asarray(norm(x))


def source_embedding(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's Embedding with the stored ``(input_dim, output_dim)`` table, on integer indices."""
    keras = keras_module()
    table = case.stored["weight"]
    if case.stored_layout["weight"] != "n e":
        raise NotImplementedError(f"embedding check cannot read stored layout {case.stored_layout['weight']}")
    embedding = keras.layers.Embedding(table.shape[0], table.shape[1], dtype=table.dtype.name)
    embedding.build((None,))
    embedding.set_weights([table])
    return np.asarray(embedding(x))


def source_prelu(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's PReLU, ``relu(x) - alpha * relu(-x)``, the stored alpha met with the canonical (channels-first)
    input by the names of its axes (a shared axis is a unit axis)."""
    keras = keras_module()
    alpha = arrange(case.stored["weight"], case.stored_layout["weight"], ("c",)).astype(x.dtype)
    alpha = alpha.reshape(alpha.shape + (1,) * (x.ndim - 1 - alpha.ndim))
    return np.asarray(keras.ops.relu(x) - alpha * keras.ops.relu(-x))


def keras_activation(name: str, version: str | None):
    """The activation the file's own Keras computed: Keras 1 and 2 define ``hard_sigmoid`` as
    ``clip(0.2 x + 0.5, 0, 1)`` (keras 2.3.1 backend), Keras 3 as ``relu6(x + 3) / 6``."""
    if name != "hard_sigmoid" or (version or "").split(".")[0] not in ("1", "2"):
        return name
    keras = keras_module()
    return lambda x: keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


CUDNN_PATTERN = "i (g u) cudnn"


def keras_from_cudnn(case: LayerCase, directions: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A CuDNNLSTM/CuDNNGRU's stored arrays as Keras's LSTM / GRU(reset_after=True) takes them, by Keras 2's
    own legacy conversion (keras 2.x ``saving.py`` ``_convert_rnn_weights``, ``from_cudnn=True``): per gate,
    input kernel ``k.T.reshape(k.shape, order='F')``, recurrent kernel ``k.T``; LSTM biases summed, GRU biases
    reshaped to (2, 3u)."""
    gates = 4 if case.layer.kind == "lstm" else 3
    arrays: dict[str, np.ndarray] = {}
    for suffix in directions:
        kernel, recurrent = case.stored[f"weight_ih_l0{suffix}"], case.stored[f"weight_hh_l0{suffix}"]
        arrays[f"weight_ih_l0{suffix}"] = np.hstack([k.T.reshape(k.shape, order="F")
                                                     for k in np.hsplit(kernel, gates)])
        arrays[f"weight_hh_l0{suffix}"] = np.hstack([k.T for k in np.hsplit(recurrent, gates)])
        bias = case.stored.get(f"bias_ih_l0{suffix}")
        if bias is not None:
            arrays[f"bias_ih_l0{suffix}"] = (np.sum(np.split(bias, 2), axis=0) if gates == 4
                                            else bias.reshape(2, -1))
    return arrays


def source_rnn(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's own LSTM/GRU with the stored arrays (kernel, recurrent_kernel, bias), the whole sequence
    returned; ``go_backwards`` and ``Bidirectional`` (concatenated) as Keras computes them."""
    keras = keras_module()
    a, stored = case.layer.attrs, case.stored
    directions = ("", "_reverse") if a.get("bidirectional") else ("",)
    if all(case.stored_layout.get(f"weight_ih_l0{suffix}") == CUDNN_PATTERN for suffix in directions):
        stored = keras_from_cudnn(case, directions)
    elif any(case.stored_layout[f"{param}{suffix}"] != "i o" for param in ("weight_ih_l0", "weight_hh_l0")
             for suffix in directions):
        raise NotImplementedError("RNN check runs on Keras (in, gates*units) kernels")
    activations = {"activation": keras_activation(a.get("activation", "tanh"), case.source_version),
                   "recurrent_activation": keras_activation(a.get("recurrent_activation", "sigmoid"),
                                                            case.source_version)}
    use_bias = "bias_ih_l0" in stored

    def make(go_backwards: bool):
        if case.layer.kind == "lstm":
            return keras.layers.LSTM(a["units"], return_sequences=True, go_backwards=go_backwards, use_bias=use_bias,
                                     dtype=x.dtype.name, **activations)
        return keras.layers.GRU(a["units"], return_sequences=True, go_backwards=go_backwards, use_bias=use_bias,
                                reset_after=a.get("reset_after", True), dtype=x.dtype.name, **activations)

    # the stored bias: (G*u,), or (2, G*u) for a reset_after GRU, as Keras keeps it
    weights = [stored[f"{param}{suffix}"] for suffix in directions
               for param in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0")[:3 if use_bias else 2]]
    backwards = bool(a.get("go_backwards"))
    if len(directions) == 2:
        rnn = keras.layers.Bidirectional(make(backwards), backward_layer=make(not backwards), merge_mode="concat")
    else:
        rnn = make(backwards)
    rnn.build(x.shape)
    rnn.set_weights(weights)
    return np.asarray(rnn(x))
