"""The canonical weight model every reader produces and every writer consumes.

Conventions (PyTorch/ONNX layouts, cross-correlation semantics):

========================  ==========================================  ===========================
layer kind                tensors                                     canonical layout
========================  ==========================================  ===========================
conv (rank 1-3, groups)   weight, bias                                ``o i [d] [h] w``, (out,)
conv_transpose            weight, bias                                ``i o [d] [h] w``, (out,)
depthwise                 weight, bias                                ``(i m) 1 [d] [h] w``
separable                 depthwise.weight, pointwise.weight,         depthwise as above,
                          pointwise.bias                              pointwise ``o i 1 1``
dense                     weight, bias                                ``o i``
batchnorm                 weight, bias, running_mean, running_var     (C,) each
embedding                 weight                                      (num, dim)
lstm / gru                weight_ih_l0, weight_hh_l0, bias_ih_l0,     PyTorch gate order
                          bias_hh_l0 (``_reverse`` for backward)      (LSTM ifgo, GRU rzn)
prelu                     weight                                      channels first
========================  ==========================================  ===========================

Weightless kinds: input, activation, pool, flatten, reshape, add, concat,
multiply, padding, upsampling, dropout, permute, other.

A :class:`Tensor` is lazy: it knows its canonical shape and dtype, where its
bytes are in the source, and the chain of transforms from the source layout to
the canonical one, so a writer can stream one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from weightport.core.layout import CORRELATION, Layout, materialize, NO_SEMANTICS

WEIGHTED_KINDS = (
    "conv", "conv_transpose", "depthwise", "separable", "dense", "batchnorm",
    "embedding", "lstm", "gru", "prelu",
)
WEIGHTLESS_KINDS = (
    "input", "activation", "pool", "global_pool", "flatten", "reshape", "add", "concat",
    "multiply", "padding", "cropping", "upsampling", "dropout", "permute", "other",
)
LAYER_KINDS = WEIGHTED_KINDS + WEIGHTLESS_KINDS


class Transform(Protocol):
    """One step from a source array to the canonical array (see weightport.core.layout)."""

    def apply(self, array: np.ndarray) -> np.ndarray: ...

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]: ...

    def inverse(self) -> "Transform": ...

    def is_identity(self) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Provenance:
    """Where a canonical tensor came from and why it was transformed as it was."""

    source_key: str
    source_layout: str
    source_semantics: str = NO_SEMANTICS
    rule: str | None = None


@dataclass
class Tensor:
    """A canonical tensor: read lazily from its source and transformed on :meth:`load`.

    ``read`` returns the array exactly as stored in the source (shape
    ``source_shape``); ``transforms`` take it to the canonical layout.
    """

    name: str
    source_shape: tuple[int, ...]
    dtype: np.dtype
    layout: Layout
    provenance: Provenance
    read: Callable[[], np.ndarray]
    transforms: tuple[Transform, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """Canonical shape."""
        shape = tuple(self.source_shape)
        for step in self.transforms:
            shape = step.shape(shape)
        return shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def load(self) -> np.ndarray:
        """The tensor in its canonical layout, as a C-contiguous array of :attr:`dtype`."""
        array = self.read()
        for step in self.transforms:
            array = step.apply(array)
        return np.asarray(materialize(array))  # a plain ndarray, never a np.memmap of the source

    def applied(self) -> list[str]:
        """Human descriptions of the transforms from the source layout to the canonical one."""
        return [step.describe() for step in self.transforms if not step.is_identity()]


def array_tensor(name: str, array: np.ndarray, layout: Layout, provenance: Provenance,
                 transforms: tuple[Transform, ...] = ()) -> Tensor:
    """A :class:`Tensor` over an in-memory array."""
    return Tensor(name, tuple(array.shape), array.dtype, layout, provenance, lambda: array, transforms)


@dataclass
class Layer:
    """One node of the canonical graph.

    ``attrs`` use canonical names: ``rank``, ``kernel_size``, ``strides``,
    ``dilations``, ``padding`` (``"valid"``, ``"same"``, ``"causal"`` or explicit
    per-side pairs ``[[before, after], ...]`` per spatial axis),
    ``groups``, ``depth_multiplier``, ``data_format`` (of the source:
    ``channels_first`` / ``channels_last``), ``activation``, ``use_bias``,
    ``epsilon``, ``momentum``, ``units``, ``output_padding``, ...
    """

    name: str
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    source_class: str | None = None
    semantics_rule: str | None = None
    output_shape: tuple[int | None, ...] | None = None  # channels-first, without batch


@dataclass
class SourceInfo:
    """What the source file was."""

    path: str
    format: str
    version: str | None = None
    backend: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Model:
    """An ordered graph of layers with their canonical tensors."""

    source: SourceInfo
    layers: list[Layer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    has_architecture: bool = False

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def weighted_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.tensors]

    def state_keys(self) -> list[tuple[str, Layer, Tensor]]:
        """``(key, layer, tensor)`` for every tensor, keyed ``<layer name>.<parameter name>``."""
        return [(f"{layer.name}.{name}", layer, tensor)
                for layer in self.layers for name, tensor in layer.tensors.items()]

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def is_bidirectional(layer: Layer) -> bool:
    """True when an RNN layer holds a backward direction (its ``*_reverse`` tensors)."""
    return any(name.endswith("_reverse") for name in layer.tensors)


def is_kernel(tensor: Tensor) -> bool:
    """True when the tensor is a convolution kernel (it has spatial axes and a semantics)."""
    return tensor.layout.semantics != NO_SEMANTICS


CANONICAL_SEMANTICS = CORRELATION
