"""Keras 2 ``CuDNNLSTM`` / ``CuDNNGRU`` weights -> the canonical (PyTorch ``nn.LSTM``/``nn.GRU``) tensors.

What the file holds (keras 2.x ``layers/cudnn_recurrent.py``), for ``G`` gates (LSTM ``ifco``, GRU
``zrh``, the order of the plain layers) and ``u`` units:

- ``kernel`` (inputs, G*u) and ``recurrent_kernel`` (u, G*u): gate blocks on the last axis; cuDNN
  receives each block flattened row-major and reads it as its (u, inputs) matrix
  (``_canonical_to_params``), so the matrix that multiplies the input is the block *re-read*, not
  transposed.  Keras 2's legacy loader undoes exactly that when it loads such weights into ``LSTM``/``GRU``
  (``saving.py`` ``_convert_rnn_weights``: ``kernel.T.reshape(kernel.shape, order='F')`` per gate for the
  input kernel, ``kernel.T`` per gate for the recurrent one).
- ``bias`` (2*G*u,): the input biases of every gate, then the recurrent biases: cuDNN's (and PyTorch's)
  ``b_ih`` and ``b_hh``.  A GRU computes ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` (Keras's
  ``reset_after=True``), which is also what PyTorch computes.

A file records the class only with its model config; a weights-only file is recognised by its bias,
twice the gates' width and 1-D (a plain Keras ``GRU(reset_after=True)`` keeps (2, 3u)).
"""

from __future__ import annotations

from typing import Any

from weightport.core.layout import NO_SEMANTICS, Layout
from weightport.core.model import Provenance, Tensor
from weightport.core.steps import Relayout, ReorderBlocks, Reread, TakeIndex
from weightport.formats.keras import hdf5

CUDNN_CLASSES = ("CuDNNLSTM", "CuDNNGRU")


def is_cudnn(source_class: str, weights: dict[str, tuple[str, Any]], prefix: str = "") -> bool:
    """True for cuDNN-format RNN weights: by class, or by a 1-D bias twice the gates' width."""
    if any(name in source_class for name in CUDNN_CLASSES):
        return True
    if prefix + "bias" not in weights or prefix + "recurrent_kernel" not in weights:
        return False
    bias, recurrent = weights[prefix + "bias"][1], weights[prefix + "recurrent_kernel"][1]
    return bias.ndim == 1 and bias.shape[0] == 2 * recurrent.shape[-1]


def kernel_tensor(name: str, key: str, dataset: Any, gates: str, canonical_gates: str) -> Tensor:
    """A cuDNN kernel (rows, G*u) -> canonical (G*u, rows): gate-major blocks, each re-read as (u, rows)."""
    rows, width = (int(n) for n in dataset.shape)
    count = len(gates)
    units = width // count
    steps = (Relayout(Layout("i (g u)"), Layout("g i u"), (("g", count),)),
             Reread((count, rows, units), (width, rows)),
             ReorderBlocks(0, gates, canonical_gates))
    return Tensor(name, (rows, width), hdf5.dataset_dtype(dataset), Layout("o i"),
                  Provenance(key, "i (g u) cudnn", NO_SEMANTICS, "cudnn-gate-matrices-row-major"),
                  hdf5.dataset_reader(dataset), steps)


def bias_tensor(name: str, key: str, dataset: Any, half: int, gates: str, canonical_gates: str) -> Tensor:
    """Half ``half`` (0: input biases, 1: recurrent biases) of a cuDNN bias (2*G*u,), gates reordered."""
    steps = (Relayout(Layout("(s o)"), Layout("s o"), (("s", 2),)), TakeIndex(half, 2),
             ReorderBlocks(0, gates, canonical_gates))
    return Tensor(name, tuple(int(n) for n in dataset.shape), hdf5.dataset_dtype(dataset), Layout("o"),
                  Provenance(key, "(s o) cudnn", NO_SEMANTICS, "cudnn-bias-input-then-recurrent"),
                  hdf5.dataset_reader(dataset), steps)


def cudnn_tensors(weights: dict[str, tuple[str, Any]], prefix: str, suffix: str, gates: str,
                  canonical_gates: str) -> dict[str, Tensor]:
    """The canonical tensors of one direction (``prefix`` ``""`` or ``"backward/"``) of a cuDNN RNN."""
    tensors = {}
    for param, variable in (("weight_ih_l0", "kernel"), ("weight_hh_l0", "recurrent_kernel")):
        key, dataset = weights[prefix + variable]
        tensors[param + suffix] = kernel_tensor(param + suffix, key, dataset, gates, canonical_gates)
    key, dataset = weights[prefix + "bias"]
    for half, param in enumerate(("bias_ih_l0", "bias_hh_l0")):
        tensors[param + suffix] = bias_tensor(param + suffix, key, dataset, half, gates, canonical_gates)
    return tensors
