"""Keras/TensorFlow as the oracle of a layer whose stored kernel is a correlation kernel: TensorFlow ops
(``tf.nn.convolution``, ``tf.nn.depthwise_conv2d``) fed Keras's own HWIO arrays, and Keras's own
LSTM/GRU layers fed the stored ``kernel``, ``recurrent_kernel`` and ``bias``.  tensorflow and keras
are imported only when an oracle runs.  See :mod:`weightport.core.oracle` for the contract.
"""

from __future__ import annotations

import os

import numpy as np

from weightport.core.oracle import LayerCase

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def source_conv(case: LayerCase, x_first: np.ndarray) -> np.ndarray:
    """TensorFlow's conv/depthwise output with the stored (correlation) kernel, for a channels-first input
    (valid padding)."""
    layer, a = case.layer, case.layer.attrs
    kernel = case.stored["weight"]
    pattern = case.stored_layout["weight"].split()
    rank = a["rank"]
    import tensorflow as tf
    x_last = np.moveaxis(x_first, 1, -1)
    if pattern[-2:] not in (["i", "o"], ["i", "m"]):
        raise NotImplementedError(f"stored layout {' '.join(pattern)} is not a TensorFlow kernel layout")
    if layer.kind == "depthwise":
        if rank != 2:
            raise NotImplementedError("depthwise check runs for 2-D kernels")
        y = tf.nn.depthwise_conv2d(x_last, kernel, [1, *a["strides"], 1], "VALID", dilations=a["dilations"]).numpy()
    else:
        groups = a.get("groups", 1)  # TensorFlow's CPU kernels run grouped convs one group at a time
        cin, cout = x_last.shape[-1] // groups, kernel.shape[-1] // groups
        y = np.concatenate([
            tf.nn.convolution(x_last[..., g * cin:(g + 1) * cin], kernel[..., g * cout:(g + 1) * cout],
                              strides=a["strides"], padding="VALID", dilations=a["dilations"]).numpy()
            for g in range(groups)], axis=-1)
    if "bias" in case.stored:
        y = y + case.stored["bias"]
    return np.moveaxis(y, -1, 1)


def keras_activation(name: str, version: str | None):
    """The activation the file's own Keras computed: Keras 1 and 2 define ``hard_sigmoid`` as
    ``clip(0.2 x + 0.5, 0, 1)`` (keras 2.3.1 backend), Keras 3 as ``relu6(x + 3) / 6``."""
    if name != "hard_sigmoid" or (version or "").split(".")[0] not in ("1", "2"):
        return name
    import keras
    return lambda x: keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def source_rnn(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """Keras's own LSTM/GRU with the stored arrays (kernel, recurrent_kernel, bias)."""
    import keras
    a = case.layer.attrs
    if a.get("bidirectional"):
        raise NotImplementedError("bidirectional RNNs are checked by the whole-model check")
    if case.stored_layout["weight_ih_l0"] != "i o":
        raise NotImplementedError("RNN check runs on Keras (in, gates*units) kernels")
    activations = {"activation": keras_activation(a.get("activation", "tanh"), case.source_version),
                   "recurrent_activation": keras_activation(a.get("recurrent_activation", "sigmoid"),
                                                            case.source_version)}
    if case.layer.kind == "lstm":
        rnn = keras.layers.LSTM(a["units"], return_sequences=True, dtype=x.dtype.name, **activations)
    else:
        rnn = keras.layers.GRU(a["units"], return_sequences=True, reset_after=a.get("reset_after", True),
                               dtype=x.dtype.name, **activations)
    rnn.build(x.shape)
    # the stored bias: (G*u,), or (2, G*u) for a reset_after GRU, as Keras keeps it
    rnn.set_weights([case.stored["weight_ih_l0"], case.stored["weight_hh_l0"], case.stored["bias_ih_l0"]])
    return np.asarray(rnn(x))
