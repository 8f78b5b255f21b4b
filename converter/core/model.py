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
layernorm                 weight (gamma), bias (beta)                 (F,) each, over one axis
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
    "conv", "conv_transpose", "depthwise", "separable", "dense", "batchnorm", "layernorm",
    "embedding", "lstm", "gru", "prelu", "constant",  # constant: a graph constant no layer holds, kept as stored
)
WEIGHTLESS_KINDS = (
    "input", "activation", "pool", "global_pool", "flatten", "reshape", "add", "concat",
    "multiply", "padding", "cropping", "upsampling", "dropout", "permute", "other",
    "subtract", "average", "maximum", "minimum", "repeat_vector", "dot", "not_equal",
    "lrn", "power", "reshape_dims", "slice", "normalize", "softmax",  # Caffe / Torch7 (formats/torch/caffe_ops.py)
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


_RENAMES = [0]  # bumped whenever a layer is renamed: every LayerList index is then rebuilt once


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

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "name" and "name" in self.__dict__:
            _RENAMES[0] += 1
        object.__setattr__(self, key, value)


class LayerList(list):
    """:attr:`Model.layers`: a list of layers that also finds a layer by name, or a layer's position, in O(1).

    The index follows the list lazily: layers appended at the end are indexed on the next lookup, and any
    other change to the list (insert, remove, assignment, sort, ...) or the renaming of any layer rebuilds it
    once.  A name held by several layers finds the first of them, as a search from the start would.
    """

    def __init__(self, layers: Any = ()) -> None:
        super().__init__(layers)
        self._forget()

    def _forget(self) -> None:
        self._names: dict[str, Layer] = {}
        self._positions: dict[int, int] = {}
        self._indexed = 0
        self._renames = _RENAMES[0]

    def _sync(self) -> None:
        if self._renames != _RENAMES[0] or self._indexed > len(self):
            self._forget()
        for position in range(self._indexed, len(self)):
            layer = list.__getitem__(self, position)
            self._names.setdefault(layer.name, layer)
            self._positions.setdefault(id(layer), position)
        self._indexed = len(self)

    def find(self, name: str) -> Layer | None:
        """The first layer called ``name``, or None."""
        self._sync()
        return self._names.get(name)

    def position(self, layer: Layer) -> int | None:
        """Where ``layer`` (this very object) is in the list, or None."""
        self._sync()
        return self._positions.get(id(layer))

    def __reduce__(self):
        return LayerList, (list(self),)

    def _changed(method):  # type: ignore[no-untyped-def]
        def changing(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            self._forget()
            return result
        changing.__name__ = method.__name__
        return changing

    insert = _changed(list.insert)
    remove = _changed(list.remove)
    pop = _changed(list.pop)
    clear = _changed(list.clear)
    sort = _changed(list.sort)
    reverse = _changed(list.reverse)
    __setitem__ = _changed(list.__setitem__)
    __delitem__ = _changed(list.__delitem__)
    __imul__ = _changed(list.__imul__)
    del _changed


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
    layers: list[Layer] = field(default_factory=LayerList)
    warnings: list[str] = field(default_factory=list)
    has_architecture: bool = False

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "layers" and not isinstance(value, LayerList):
            value = LayerList(value)  # any list assigned becomes an indexed one
        object.__setattr__(self, key, value)

    def layer(self, name: str) -> Layer:
        """The layer called ``name`` (the first, when several are), in O(1); KeyError when there is none."""
        found = self.layers.find(name)
        if found is None:
            raise KeyError(name)
        return found

    def find(self, name: str) -> Layer | None:
        """The layer called ``name``, or None, in O(1)."""
        return self.layers.find(name)

    def input_names(self, layer: Layer) -> list[str]:
        """The names of the layers feeding ``layer``: its ``inputs``, or else the layer before it in graph order."""
        if layer.inputs:
            return list(layer.inputs)
        position = self.layers.position(layer)
        return [self.layers[position - 1].name] if position else []

    def input_layers(self) -> list[Layer]:
        """The model's ``input`` layers in graph order: one array each when the model runs."""
        return [layer for layer in self.layers if layer.kind == "input"]

    def weighted_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.tensors]

    def state_keys(self) -> list[tuple[str, Layer, Tensor]]:
        """``(key, layer, tensor)`` for every tensor, keyed ``<layer name>.<parameter name>``."""
        return [(state_key(layer.name, name), layer, tensor)
                for layer in self.layers for name, tensor in layer.tensors.items()]

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


ROOT_LAYER = ""  # the layer holding a model's top-level parameters (``cls_token``), as torch names its root module


def state_key(layer_name: str, param: str) -> str:
    """The state-dict key of ``param`` of a layer: ``<layer>.<param>``, or ``param`` alone for the root layer."""
    return f"{layer_name}.{param}" if layer_name != ROOT_LAYER else param


def place_tensor(model: Model, key: str, tensor: Tensor) -> Layer:
    """Put ``tensor`` in the layer its state-dict ``key`` names (``a.b.weight``: layer ``a.b``, parameter
    ``weight``; a key without a dot is a top-level parameter of the root layer), creating the layer (kind
    ``other``) when needed; :func:`state_key` gives ``key`` back exactly."""
    layer_name, _, param = key.rpartition(".")
    layer = model.find(layer_name)
    if layer is None:
        layer = Layer(layer_name, "other")
        model.layers.append(layer)
    tensor.name = param
    layer.tensors[param] = tensor
    return layer


def is_bidirectional(layer: Layer) -> bool:
    """True when an RNN layer holds a backward direction (its ``*_reverse`` tensors)."""
    return any(name.endswith("_reverse") for name in layer.tensors)


def is_kernel(tensor: Tensor) -> bool:
    """True when the tensor is a convolution kernel (it has spatial axes and a semantics)."""
    return tensor.layout.semantics != NO_SEMANTICS


CANONICAL_SEMANTICS = CORRELATION
