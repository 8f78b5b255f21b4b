"""The layout algebra: the one place where weight axes are permuted, split, merged and flipped.

A *layout* is an axis pattern plus a *semantics*.

Patterns are einops-style strings of axis names separated by spaces; a
parenthesised group is several axes stored merged in one array axis, and ``1``
is an axis of length one::

    "h w i o"        Keras Conv2D kernel        (kh, kw, in, out)
    "o i h w"        PyTorch/ONNX Conv2d weight (out, in/groups, kh, kw)
    "h w i m"        Keras DepthwiseConv2D      (kh, kw, in, multiplier)
    "(i m) 1 h w"    PyTorch depthwise weight   (in*multiplier, 1, kh, kw)
    "(h w c) o"      Keras Dense after Flatten of a channels-last map
    "o (c h w)"      PyTorch Linear after Flatten of a channels-first map

Axis names: ``o`` output channels, ``i`` input channels (per group), ``m``
depth multiplier, ``d h w`` spatial axes of a kernel (a 1-D kernel uses ``w``),
``c`` channels of a flattened feature map, ``g`` gates, ``u`` units.

Semantics says what a convolution layer computes with the kernel:
``correlation`` (TensorFlow, Keras, PyTorch, ONNX: the kernel slides as stored)
or ``convolution`` (Theano ``conv2d`` with ``filter_flip=True``,
``scipy.signal.convolve2d``, the textbook: the kernel is rotated 180 degrees
over its spatial axes).  Tensors that are not convolution kernels have
semantics ``none``.  Changing semantics flips every spatial axis.

Everything here is plain NumPy.  Flips are views; the permutation is the one
copy, made by :func:`materialize`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightport.core.errors import LayoutError

CORRELATION = "correlation"
CONVOLUTION = "convolution"
NO_SEMANTICS = "none"
SEMANTICS = (CORRELATION, CONVOLUTION, NO_SEMANTICS)

SPATIAL_AXES = ("d", "h", "w")

_TOKEN = re.compile(r"\(|\)|[A-Za-z_][A-Za-z0-9_]*|1")


@dataclass(frozen=True)
class Layout:
    """An axis pattern (see module docstring) and the semantics of the kernel."""

    pattern: str
    semantics: str = NO_SEMANTICS

    def __post_init__(self) -> None:
        if self.semantics not in SEMANTICS:
            raise LayoutError(f"unknown semantics {self.semantics!r}; use one of {SEMANTICS}")
        parse_pattern(self.pattern)

    @property
    def axes(self) -> tuple[str, ...]:
        """Elementary axis names, in storage order."""
        return tuple(name for group in parse_pattern(self.pattern) for name in group)

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        """The kernel's spatial axis names, in storage order."""
        return tuple(name for name in self.axes if name in SPATIAL_AXES)

    def compact(self) -> str:
        """Upper-case axis-order string such as ``OIHW`` (groups kept in parentheses)."""
        parts = []
        for group in parse_pattern(self.pattern):
            if not group:
                parts.append("1")
            elif len(group) == 1:
                parts.append(group[0].upper())
            else:
                parts.append("(" + "".join(name.upper() for name in group) + ")")
        return "".join(parts)


def parse_pattern(pattern: str) -> tuple[tuple[str, ...], ...]:
    """Split a pattern into array axes, each a tuple of elementary names.

    ``"(i m) 1 h w"`` -> ``(("i", "m"), (), ("h",), ("w",))``.
    """
    groups: list[tuple[str, ...]] = []
    current: list[str] | None = None
    stripped = pattern.replace(" ", "").replace("(", "").replace(")", "").replace("_", "")
    if not stripped:
        return ()
    if not stripped.isalnum():
        raise LayoutError(f"bad layout pattern {pattern!r}")
    for token in _TOKEN.findall(pattern):
        if token == "(":
            if current is not None:
                raise LayoutError(f"nested group in layout pattern {pattern!r}")
            current = []
        elif token == ")":
            if current is None:
                raise LayoutError(f"unbalanced ')' in layout pattern {pattern!r}")
            groups.append(tuple(current))
            current = None
        elif token == "1":
            if current is not None:
                raise LayoutError(f"'1' inside a group in layout pattern {pattern!r}")
            groups.append(())
        elif current is not None:
            current.append(token)
        else:
            groups.append((token,))
    if current is not None:
        raise LayoutError(f"unbalanced '(' in layout pattern {pattern!r}")
    names = [name for group in groups for name in group]
    if len(set(names)) != len(names):
        raise LayoutError(f"repeated axis name in layout pattern {pattern!r}")
    return tuple(groups)


def axis_sizes(shape: tuple[int, ...], pattern: str, known: dict[str, int] | None = None) -> dict[str, int]:
    """Size of every elementary axis of ``pattern`` for an array of ``shape``.

    A merged group may hold at most one axis whose size is not in ``known``.
    """
    groups = parse_pattern(pattern)
    if len(groups) != len(shape):
        raise LayoutError(f"layout {pattern!r} has {len(groups)} axes but the array has shape {tuple(shape)}")
    sizes = dict(known or {})
    for group, length in zip(groups, shape):
        if not group:
            if length != 1:
                raise LayoutError(f"layout {pattern!r} expects a length-1 axis, array has shape {tuple(shape)}")
            continue
        unknown = [name for name in group if name not in sizes]
        if len(unknown) > 1:
            raise LayoutError(f"layout {pattern!r}: sizes of {unknown} are not known for shape {tuple(shape)}")
        known_product = math.prod(sizes[name] for name in group if name in sizes)
        if unknown:
            if known_product == 0 or length % known_product:
                raise LayoutError(f"layout {pattern!r} does not divide shape {tuple(shape)}")
            sizes[unknown[0]] = length // known_product
        elif known_product != length:
            raise LayoutError(f"layout {pattern!r} with sizes {sizes} does not match shape {tuple(shape)}")
    return sizes


def target_shape(shape: tuple[int, ...], src: str, dst: str, known: dict[str, int] | None = None) -> tuple[int, ...]:
    """Shape an array of ``shape`` in pattern ``src`` has after rearranging to ``dst``."""
    sizes = axis_sizes(tuple(shape), src, known)
    return tuple(math.prod(sizes[name] for name in group) for group in parse_pattern(dst))


def flip_axes(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """A view of ``array`` reversed along each of ``axes`` (a 180-degree rotation when they are the spatial axes)."""
    index = [slice(None)] * array.ndim
    for axis in axes:
        index[axis] = slice(None, None, -1)
    return array[tuple(index)]


def relayout_view(array: np.ndarray, src: Layout, dst: Layout, known: dict[str, int] | None = None) -> np.ndarray:
    """``array`` stored in ``src`` seen in ``dst``: permuted, split/merged and flipped as needed.

    The result is a view when no merged group has to be formed from
    non-contiguous axes; call :func:`materialize` to get a contiguous copy.
    Semantics differ -> every spatial axis is reversed (correlation kernel <->
    convolution kernel).
    """
    out_shape = target_shape(tuple(array.shape), src.pattern, dst.pattern, known)
    return elementary_view(array, src, dst, known).reshape(out_shape)


def elementary_view(array: np.ndarray, src: Layout, dst: Layout, known: dict[str, int] | None = None) -> np.ndarray:
    """``array`` in ``src`` as a view with one axis per elementary name of ``dst``, in ``dst`` order.

    Never copies (merged groups of ``dst`` are left split), so a caller can
    copy it block by block: the C-order bytes of this view are exactly the
    C-order bytes of ``relayout(array, src, dst)``.  Spatial axes are reversed
    when the semantics differ.
    """
    src_names = list(Layout(src.pattern).axes)
    dst_names = list(Layout(dst.pattern).axes)
    if sorted(src_names) != sorted(dst_names):
        raise LayoutError(f"layouts {src.pattern!r} and {dst.pattern!r} name different axes")
    sizes = axis_sizes(tuple(array.shape), src.pattern, known)
    elementary = array.reshape([sizes[name] for name in src_names])
    if needs_flip(src, dst):
        spatial = tuple(k for k, name in enumerate(src_names) if name in SPATIAL_AXES)
        elementary = flip_axes(elementary, spatial)
    return elementary.transpose([src_names.index(name) for name in dst_names])


def needs_flip(src: Layout, dst: Layout) -> bool:
    """True when going from ``src`` to ``dst`` changes correlation <-> convolution."""
    pair = {src.semantics, dst.semantics}
    if NO_SEMANTICS in pair and len(pair) == 2:
        raise LayoutError(f"cannot change semantics {src.semantics!r} -> {dst.semantics!r}")
    return src.semantics != dst.semantics


def materialize(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of a (possibly permuted, flipped) view; the array itself if already contiguous."""
    return array if array.flags.c_contiguous else np.array(array, order="C", copy=True)


def relayout(array: np.ndarray, src: Layout, dst: Layout, known: dict[str, int] | None = None) -> np.ndarray:
    """``array`` converted from layout ``src`` to layout ``dst`` as a C-contiguous array."""
    return materialize(relayout_view(array, src, dst, known))


def copy_blocks(view: np.ndarray, block_bytes: int = 8 << 20) -> Iterator[np.ndarray]:
    """The bytes of ``materialize(view)`` as a sequence of C-contiguous blocks of about ``block_bytes``.

    ``view`` is any strided view (permuted, flipped, over a memory map); the
    blocks follow axis 0 (recursing into axis 1, ... when one slice along axis
    0 is larger than ``block_bytes``), so writing them one after another
    writes the C-order array.  Every block is a view of one of :data:`RING`
    reused buffers and is valid until ``RING - 1`` more blocks are produced
    (room for a writer thread, see :mod:`weightport.core.streaming`): memory stays
    at about ``(RING + 1) * block_bytes`` whatever the size of ``view``.  A view that is
    already C-contiguous is yielded as it is.
    """
    if view.ndim == 0 or view.size == 0 or view.flags.c_contiguous:
        yield view
        return
    row_bytes = view[0].nbytes
    if row_bytes > block_bytes and view.ndim > 1:
        for row in view:
            yield from copy_blocks(row, block_bytes)
        return
    rows = max(1, min(view.shape[0], block_bytes // max(row_bytes, 1)))
    buffers = block_buffers(max(block_bytes, row_bytes))
    for start in range(0, view.shape[0], rows):
        yield buffers.copy(view[start:start + rows])


TILE_ELEMENTS = 1 << 14
RING = 3
_SHARED: list["BlockBuffers"] = []


def block_buffers(nbytes: int) -> "BlockBuffers":
    """The process's shared :class:`BlockBuffers`, grown to ``nbytes`` when a caller needs more."""
    if not _SHARED or _SHARED[0].nbytes < nbytes:
        _SHARED[:] = [BlockBuffers(nbytes)]
    return _SHARED[0]


class BlockBuffers:
    """:data:`RING` output buffers used in turn and one scratch buffer, shared by every tensor of a
    conversion (fresh memory costs a page fault per 4 KiB on first touch, so it is made once)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ring = [np.empty(nbytes, np.uint8) for _ in range(RING)]
        self.turn = 0
        self.scratch = np.empty(nbytes, np.uint8)

    def copy(self, part: np.ndarray) -> np.ndarray:
        """``part`` as a C-contiguous array in the output buffer, by a cache-friendly two-stage transpose.

        Stage 1 moves the axis that is contiguous in the source (smallest
        stride) last, so the source is read in runs; stage 2 is a tiled 2-D
        transpose of ``(P, M, S)`` into ``(P, S, M)`` that stays in cache.
        """
        self.turn = (self.turn + 1) % RING
        out = self.ring[self.turn][:part.nbytes].view(part.dtype).reshape(part.shape)
        strides = [abs(st) if n > 1 else np.inf for st, n in zip(part.strides, part.shape)]
        axis = int(np.argmin(strides))
        if axis == part.ndim - 1 or strides[axis] == np.inf:
            np.copyto(out, part)
            return out
        moved = np.moveaxis(part, axis, -1)
        staged = self.scratch[:part.nbytes].view(part.dtype).reshape(moved.shape)
        half = moved.shape[0] // 2
        threads = COPY_THREADS if part.nbytes >= PARALLEL_MIN_BYTES else 1
        in_parallel(lambda rows: np.copyto(staged[rows], moved[rows]), [slice(0, half), slice(half, None)], threads)
        p, s = math.prod(part.shape[:axis]), part.shape[axis]
        m = part.size // max(p * s, 1)
        src3, dst3 = staged.reshape(p, m, s), out.reshape(p, s, m)
        tile_m = max(1, min(m, TILE_ELEMENTS // s))
        tile_p = max(1, TILE_ELEMENTS // (tile_m * s))
        starts = range(0, m, tile_m)

        def transpose_tiles(columns: range) -> None:
            for p0 in range(0, p, tile_p):
                for m0 in columns:
                    dst3[p0:p0 + tile_p, :, m0:m0 + tile_m] = src3[p0:p0 + tile_p, m0:m0 + tile_m].transpose(0, 2, 1)
        in_parallel(transpose_tiles, [starts[:len(starts) // 2], starts[len(starts) // 2:]], threads)
        return out


COPY_THREADS = min(2, os.cpu_count() or 1)
PARALLEL_MIN_BYTES = 1 << 20  # below this, handing work to a thread costs more than the copy
_POOL: list[ThreadPoolExecutor] = []


def in_parallel(job: Callable[[Any], None], shares: list[Any], threads: int) -> None:
    """Run ``job(share)`` for every share, on up to ``threads`` threads (NumPy's copies release the
    GIL; two threads halve the blocked transpose of ``benchmarks/transpose_strategies.py``)."""
    if threads < 2 or len(shares) < 2:
        for share in shares:
            job(share)
        return
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="weightport-copy"))
    for result in [_POOL[0].submit(job, share) for share in shares]:
        result.result()


def reorder_blocks(array: np.ndarray, axis: int, src_order: str, dst_order: str) -> np.ndarray:
    """Reorder equal blocks along ``axis``: gate blocks of an RNN, for example.

    ``src_order`` names the blocks as stored (one letter each, e.g. ``"zrh"``
    for Keras GRU gates), ``dst_order`` the wanted order (``"rzh"`` for
    PyTorch).  Returns a C-contiguous array.
    """
    if sorted(src_order) != sorted(dst_order) or len(set(src_order)) != len(src_order):
        raise LayoutError(f"block orders {src_order!r} and {dst_order!r} do not name the same blocks")
    length = array.shape[axis]
    if length % len(src_order):
        raise LayoutError(f"axis of length {length} does not split into {len(src_order)} blocks")
    blocks = np.split(array, len(src_order), axis=axis)
    return materialize(np.concatenate([blocks[src_order.index(b)] for b in dst_order], axis=axis))


def concat_blocks(arrays: list[np.ndarray], axis: int = -1) -> np.ndarray:
    """Join per-gate arrays into one array of equal blocks along ``axis`` (Keras 1 ``W_i, W_f, ...``)."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise LayoutError(f"blocks to join differ in shape: {sorted(shapes)}")
    return materialize(np.concatenate(arrays, axis=axis))


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


# Named layouts of every framework this project speaks, by (framework, tensor role).
# Spatial rank is part of the role ("conv2d").  Semantics of the framework's op
# is attached by the rules table (weightport.core.rules), not here.
CANONICAL_PATTERNS: dict[str, str] = {
    "conv1d": "o i w",
    "conv2d": "o i h w",
    "conv3d": "o i d h w",
    "conv_transpose1d": "i o w",
    "conv_transpose2d": "i o h w",
    "conv_transpose3d": "i o d h w",
    "depthwise1d": "(i m) 1 w",
    "depthwise2d": "(i m) 1 h w",
    "depthwise3d": "(i m) 1 d h w",
    "pointwise1d": "o i 1",
    "pointwise2d": "o i 1 1",
    "dense": "o i",
}

KERAS_PATTERNS: dict[str, str] = {
    "conv1d": "w i o",
    "conv2d": "h w i o",
    "conv3d": "d h w i o",
    "conv_transpose1d": "w o i",
    "conv_transpose2d": "h w o i",
    "conv_transpose3d": "d h w o i",
    "depthwise1d": "w i m",
    "depthwise2d": "h w i m",
    "depthwise3d": "d h w i m",
    "pointwise1d": "1 i o",
    "pointwise2d": "1 1 i o",
    "dense": "i o",
}

# Keras 1 with dim_ordering='th' (Theano-style) and Theano/Lasagne arrays.
THEANO_PATTERNS: dict[str, str] = {
    "conv1d": "o i w",
    "conv2d": "o i h w",
    "conv3d": "o i d h w",
    "conv_transpose2d": "i o h w",
    "dense": "i o",
}


def conv_role(kind: str, rank: int) -> str:
    """Role key of a kernel: ``conv_role("conv", 2) == "conv2d"``."""
    if rank not in (1, 2, 3):
        raise LayoutError(f"convolutions of spatial rank {rank} are not supported (1, 2 or 3)")
    return f"{kind}{rank}d"


def hwio_to_oihw(kernel: np.ndarray, semantics_from: str = CORRELATION, semantics_to: str = CORRELATION) -> np.ndarray:
    """Keras Conv2D kernel (kh, kw, in, out) -> PyTorch weight (out, in, kh, kw)."""
    return relayout(kernel, Layout("h w i o", semantics_from), Layout("o i h w", semantics_to))


def oihw_to_hwio(weight: np.ndarray, semantics_from: str = CORRELATION, semantics_to: str = CORRELATION) -> np.ndarray:
    """PyTorch weight (out, in, kh, kw) -> Keras Conv2D kernel (kh, kw, in, out)."""
    return relayout(weight, Layout("o i h w", semantics_from), Layout("h w i o", semantics_to))
