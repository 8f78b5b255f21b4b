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
copy, made by :func:`materialize`.  Transform steps built on this algebra are in
:mod:`weightport.core.steps`, the block-by-block copy engine in
:mod:`weightport.core.blocks`; each framework's named layouts live in its
folder under ``weightport.formats`` (the canonical ones are here).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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
    if parse_pattern(src) == parse_pattern(dst):
        axis_count = len(parse_pattern(src))
        if axis_count != len(shape):
            raise LayoutError(f"layout {src!r} has {axis_count} axes but the array has shape {tuple(shape)}")
        return tuple(shape)
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
    if parse_pattern(src.pattern) == parse_pattern(dst.pattern):
        return semantics_view(array, src, dst)
    out_shape = target_shape(tuple(array.shape), src.pattern, dst.pattern, known)
    return elementary_view(array, src, dst, known).reshape(out_shape)


def semantics_view(array: np.ndarray, src: Layout, dst: Layout) -> np.ndarray:
    """``array`` in ``src`` seen in ``dst`` when both arrange the axes alike: reversed along every spatial
    axis if the semantics differ, else unchanged.  Needs no axis sizes, so a merged group such as a
    depthwise kernel's ``(i m)`` stays whole even when ``m`` is not known."""
    groups = parse_pattern(src.pattern)
    if len(groups) != array.ndim:
        raise LayoutError(f"layout {src.pattern!r} has {len(groups)} axes but the array has shape {array.shape}")
    if not needs_flip(src, dst):
        return array
    return flip_axes(array, tuple(k for k, group in enumerate(groups) if len(group) == 1 and group[0] in SPATIAL_AXES))


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


# The canonical (PyTorch/ONNX) layout of every tensor role.  Spatial rank is part of
# the role ("conv2d").  Each framework names its own layouts by the same roles in its
# folder (weightport.formats.keras.patterns); semantics come from weightport.core.rules.
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

def conv_role(kind: str, rank: int) -> str:
    """Role key of a kernel: ``conv_role("conv", 2) == "conv2d"``."""
    if rank not in (1, 2, 3):
        raise LayoutError(f"convolutions of spatial rank {rank} are not supported (1, 2 or 3)")
    return f"{kind}{rank}d"
