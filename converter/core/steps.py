"""Transform steps: the invertible operations a tensor goes through from its stored layout to the
canonical one (and from the canonical one to a target's), each with ``apply``, ``shape``,
``inverse``, ``is_identity`` and ``describe``.  Built on :mod:`weightport.core.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightport.core.errors import LayoutError
from weightport.core.layout import (CONVOLUTION, CORRELATION, NO_SEMANTICS, Layout, materialize, needs_flip,
                                    parse_pattern, relayout, reorder_blocks, target_shape)


@dataclass(frozen=True)
class Relayout:
    """A transform step: rearrange from ``src`` to ``dst`` (flipping if semantics differ)."""

    src: Layout
    dst: Layout
    known: tuple[tuple[str, int], ...] = field(default=())

    def apply(self, array: np.ndarray) -> np.ndarray:
        return relayout(array, self.src, self.dst, dict(self.known))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return target_shape(shape, self.src.pattern, self.dst.pattern, dict(self.known))

    def inverse(self) -> "Relayout":
        return Relayout(self.dst, self.src, self.known)

    def is_identity(self) -> bool:
        return self.src == self.dst

    def describe(self) -> str:
        parts = []
        if self.src.pattern.replace(" ", "") != self.dst.pattern.replace(" ", ""):
            sizes = "".join(f" {k}={v}" for k, v in self.known)
            parts.append(f"rearrange {self.src.compact()} -> {self.dst.compact()}{sizes}")
        if self.src.semantics != self.dst.semantics:
            spatial = ",".join(a.upper() for a in self.src.spatial_axes) or "spatial axes"
            parts.append(f"flip {spatial} ({self.src.semantics} -> {self.dst.semantics})")
        return "; ".join(parts) or "no change"


def compose_relayouts(steps: tuple[Any, ...]) -> Relayout | None:
    """One :class:`Relayout` doing what the chain ``steps`` does, or None when the chain has other steps.

    Consecutive steps must meet in the same pattern (the array between them
    is read as it was written).  Flips compose: two semantics changes cancel.
    """
    if not steps or not all(isinstance(step, Relayout) for step in steps):
        return None
    for before, after in zip(steps, steps[1:]):
        if parse_pattern(before.dst.pattern) != parse_pattern(after.src.pattern):
            return None
        if before.dst.semantics != after.src.semantics:
            return None
    flips = sum(needs_flip(step.src, step.dst) for step in steps) % 2
    first, last = steps[0].src, steps[-1].dst
    known: dict[str, int] = {}
    for step in steps:
        known.update(dict(step.known))
    if first.semantics == NO_SEMANTICS or last.semantics == NO_SEMANTICS:
        semantics = (first.semantics, first.semantics)
    else:
        other = CONVOLUTION if first.semantics == CORRELATION else CORRELATION
        semantics = (first.semantics, other if flips else first.semantics)
    return Relayout(Layout(first.pattern, semantics[0]), Layout(last.pattern, semantics[1]), tuple(sorted(known.items())))


@dataclass(frozen=True)
class ReorderBlocks:
    """A transform step: reorder gate blocks along ``axis`` (see :func:`reorder_blocks`)."""

    axis: int
    src_order: str
    dst_order: str

    def apply(self, array: np.ndarray) -> np.ndarray:
        return reorder_blocks(array, self.axis, self.src_order, self.dst_order)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> "ReorderBlocks":
        return ReorderBlocks(self.axis, self.dst_order, self.src_order)

    def is_identity(self) -> bool:
        return self.src_order == self.dst_order

    def describe(self) -> str:
        return f"reorder gate blocks on axis {self.axis}: {self.src_order} -> {self.dst_order}"


@dataclass(frozen=True)
class TakeIndex:
    """A transform step: the sub-array at ``index`` of the leading axis (e.g. one row of a stacked bias)."""

    index: int
    count: int

    def apply(self, array: np.ndarray) -> np.ndarray:
        if array.shape[0] != self.count:
            raise LayoutError(f"expected {self.count} stacked arrays, found leading axis {array.shape[0]}")
        return array[self.index]

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[1:])

    def inverse(self) -> "TakeIndex":
        raise LayoutError("taking one of stacked arrays cannot be inverted on its own")

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"take [{self.index}] of {self.count} stacked arrays"


def write_back(stored: np.ndarray, steps: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    """``stored`` with the part that ``steps`` read out of it replaced by ``value``.

    The inverse of reading a tensor through ``steps``: invertible steps are
    inverted; a :class:`TakeIndex` puts ``value`` back into its slot of the
    stacked array (so two canonical tensors read from one stored array, such as
    ONNX's ``B = [Wb, Rb]``, are written back one after the other).  Returns a
    new C-contiguous array of ``stored``'s shape; ``stored`` is not modified.
    """
    if not steps:
        if tuple(value.shape) != tuple(stored.shape):
            raise LayoutError(f"value of shape {tuple(value.shape)} does not fit stored shape {tuple(stored.shape)}")
        return materialize(np.asarray(value))
    *head, last = steps
    if isinstance(last, TakeIndex):
        before = stored
        for step in head:
            before = step.apply(before)
        stack = np.array(before, copy=True)
        stack[last.index] = value
        value = stack
    else:
        value = last.inverse().apply(value)
    return write_back(stored, tuple(head), value)


@dataclass(frozen=True)
class ScaleValues:
    """A value step: multiply every element by ``factor`` (Caffe's BatchNorm divides its stored mean and
    variance by the scale-factor blob; the factor is kept with its ``reason``)."""

    factor: float
    reason: str

    def apply(self, array: np.ndarray) -> np.ndarray:
        return (array * np.asarray(self.factor, dtype=array.dtype)).astype(array.dtype)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> "ScaleValues":
        if self.factor == 0:
            raise LayoutError(f"a scale by 0 ({self.reason}) cannot be inverted")
        return ScaleValues(1.0 / self.factor, self.reason)

    def is_identity(self) -> bool:
        return self.factor == 1.0

    def describe(self) -> str:
        return f"multiply by {self.factor:.9g} ({self.reason})"
