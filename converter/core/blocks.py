"""The block-copy engine: a strided view (permuted, flipped, over a memory map) copied to C order
in blocks of a few MiB, so a tensor of any size streams through a bounded amount of memory.

See docs/performance.md for the strategy (two-stage tiled transpose) and its measurements.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

BLOCK_BYTES = 8 << 20
TILE_BYTES = 128 << 10  # a tile of the transpose: 128 KiB read and written in cache (docs/performance.md)
RING = 3


def copy_blocks(view: np.ndarray, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """The bytes of ``materialize(view)`` as a sequence of C-contiguous blocks of about ``block_bytes``.

    ``view`` is any strided view (permuted, flipped, over a memory map); the
    blocks follow axis 0 (recursing into axis 1, ... when one slice along axis
    0 is larger than ``block_bytes``), so writing them one after another
    writes the C-order array.  Every block is a view of one of :data:`RING`
    reused buffers and is valid until ``RING - 1`` more blocks are produced
    (room for a writer thread, see :mod:`weightport.core.streaming`): memory stays
    at about ``(RING + 1) * block_bytes`` whatever the size of ``view``.  A view that is
    already C-contiguous is yielded as it is.

    The buffers are the current conversion's (:func:`conversion_buffers`, entered by
    :func:`weightport.api.save`), never another thread's; outside a conversion they are this
    call's own.
    """
    if view.ndim == 0 or view.size == 0 or view.flags.c_contiguous:
        yield view
        return
    yield from blocks_into(view, block_bytes, buffers_for(max(block_bytes, view.itemsize)))


def blocks_into(view: np.ndarray, block_bytes: int, buffers: "BlockBuffers") -> Iterator[np.ndarray]:
    """:func:`copy_blocks` with its buffers chosen (once for the whole view, rows included)."""
    row_bytes = view[0].nbytes
    if row_bytes > block_bytes and view.ndim > 1:
        for row in view:
            yield from blocks_into(row, block_bytes, buffers)
        return
    rows = max(1, min(view.shape[0], block_bytes // max(row_bytes, 1)))
    for start in range(0, view.shape[0], rows):
        yield buffers.copy(view[start:start + rows])


class BufferPool:
    """Idle :class:`BlockBuffers` of :data:`BLOCK_BYTES`, each lent to one conversion at a time.

    Fresh memory costs a page fault per 4 KiB on first touch, so a long-running process keeps a few
    warm sets instead of allocating them per conversion; at most ``keep`` idle sets are kept (a
    burst of concurrent conversions does not leave its peak behind), and a set of another size is
    never kept (no buffer sized to an unusual request lives on).
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.idle: list[BlockBuffers] = []
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> "BlockBuffers":
        with self.lock:
            if nbytes <= BLOCK_BYTES and self.idle:
                return self.idle.pop()
        return BlockBuffers(max(nbytes, BLOCK_BYTES))

    def give_back(self, buffers: "BlockBuffers") -> None:
        if buffers.nbytes != BLOCK_BYTES:
            return
        with self.lock:
            if len(self.idle) < self.keep:
                self.idle.append(buffers)

    def forget(self) -> None:
        """After ``fork``: a new lock (the parent's may have been held by a thread that is not here)."""
        self.lock = threading.Lock()


POOL = BufferPool(keep=max(2, os.cpu_count() or 1))
_CONVERSION = threading.local()


class ConversionBuffers:
    """The block buffers of one conversion: taken from :data:`POOL` when first needed."""

    def __init__(self) -> None:
        self.buffers: BlockBuffers | None = None

    def get(self, nbytes: int) -> "BlockBuffers":
        if self.buffers is None:
            self.buffers = POOL.take(nbytes)
        elif self.buffers.nbytes < nbytes:  # the old set may still back blocks in flight: dropped, not pooled
            self.buffers = BlockBuffers(nbytes)
        return self.buffers


@contextlib.contextmanager
def conversion_buffers() -> Iterator[ConversionBuffers]:
    """Mark the current thread's work until exit as one conversion: every :func:`copy_blocks` in it shares
    one set of buffers (its tensors are written one after another), which no other thread sees.

    On a clean exit the set goes back to :data:`POOL`; after an exception (a ``KeyboardInterrupt``
    may leave a copy thread still writing into it) it is dropped.  Nested use joins the outer one.
    """
    outer = getattr(_CONVERSION, "scope", None)
    if outer is not None:
        yield outer
        return
    scope = _CONVERSION.scope = ConversionBuffers()
    try:
        yield scope
    finally:
        _CONVERSION.scope = None
    if scope.buffers is not None:
        POOL.give_back(scope.buffers)


def buffers_for(nbytes: int) -> "BlockBuffers":
    """The current conversion's buffers, or a set of this call's own outside a conversion."""
    scope = getattr(_CONVERSION, "scope", None)
    return scope.get(nbytes) if scope is not None else BlockBuffers(max(nbytes, 1))


class BlockBuffers:
    """:data:`RING` output buffers used in turn and one scratch buffer, shared by every tensor of one
    conversion (and by no other conversion at the same time)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ring = [np.empty(nbytes, np.uint8) for _ in range(RING)]
        self.turn = 0
        self.scratch = np.empty(nbytes, np.uint8)

    def copy(self, part: np.ndarray) -> np.ndarray:
        """``part`` as a C-contiguous array in the output buffer, by a cache-friendly tiled transpose.

        The axis that is contiguous in the source (smallest stride) is the one that must move: the
        output is ``(P, S, M)`` (``S`` that axis, ``P`` the axes before it, ``M`` those after) read from
        the source as ``(P, M, S)``, runs of ``S`` along the source's contiguous axis.  Where that
        ``(P, M, S)`` is a strided view of the source (a plain 2-D transpose: a Dense kernel, an
        LLM's matrices) it is transposed tile by tile straight from the source; otherwise (a conv
        kernel, a Flatten row permutation) stage 1 first copies it in runs of ``S`` into the scratch
        buffer.  Tiles hold :data:`TILE_BYTES`, so a tile's reads and writes stay in cache.
        """
        self.turn = (self.turn + 1) % RING
        out = self.ring[self.turn][:part.nbytes].view(part.dtype).reshape(part.shape)
        strides = [abs(st) if n > 1 else np.inf for st, n in zip(part.strides, part.shape)]
        axis = int(np.argmin(strides))
        if axis == part.ndim - 1 or strides[axis] == np.inf:
            np.copyto(out, part)
            return out
        moved = np.moveaxis(part, axis, -1)
        p, s = math.prod(part.shape[:axis]), part.shape[axis]
        m = part.size // max(p * s, 1)
        threads = COPY_THREADS if part.nbytes >= PARALLEL_MIN_BYTES else 1
        src3 = view_as(moved, (p, m, s))
        if src3 is None:  # stage 1: the runs of S gathered into the scratch buffer
            staged = self.scratch[:part.nbytes].view(part.dtype).reshape(moved.shape)
            half = moved.shape[0] // 2
            in_parallel(lambda rows: np.copyto(staged[rows], moved[rows]), [slice(0, half), slice(half, None)],
                        threads)
            src3 = staged.reshape(p, m, s)
        dst3 = out.reshape(p, s, m)
        tile_elements = max(1, TILE_BYTES // part.itemsize)
        tile_m = max(1, min(m, tile_elements // s))
        tile_p = max(1, tile_elements // (tile_m * s))
        starts = range(0, m, tile_m)

        def transpose_tiles(columns: range) -> None:
            for p0 in range(0, p, tile_p):
                for m0 in columns:
                    dst3[p0:p0 + tile_p, :, m0:m0 + tile_m] = src3[p0:p0 + tile_p, m0:m0 + tile_m].transpose(0, 2, 1)
        in_parallel(transpose_tiles, [starts[:len(starts) // 2], starts[len(starts) // 2:]], threads)
        return out


def view_as(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``array`` reshaped to ``shape`` as a view of the same memory, or None where that needs a copy."""
    try:
        return np.reshape(array, shape, copy=False)  # NumPy >= 2.1
    except TypeError:  # an older NumPy: no ``copy`` argument
        view = array.view()
        try:
            view.shape = shape
        except AttributeError:
            return None
        return view
    except ValueError:
        return None


COPY_THREADS = min(2, os.cpu_count() or 1)
PARALLEL_MIN_BYTES = 1 << 20  # below this, handing work to a thread costs more than the copy


class CopyThreads:
    """The process's helper threads for :func:`in_parallel`: stateless workers, made on first use (and
    again in a forked child, which inherits this object but not the threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None:
                from concurrent.futures import ThreadPoolExecutor  # on first use: start-up does not pay for it
                self.executor = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="weightport-copy")
            return self.executor

    def forget(self) -> None:
        self.lock = threading.Lock()
        self.executor = None


HELPERS = CopyThreads()


def in_parallel(job: Callable[[Any], None], shares: list[Any], threads: int) -> None:
    """Run ``job(share)`` for every share, on up to ``threads`` threads (NumPy's copies release the
    GIL; two threads halve the blocked transpose of ``benchmarks/transpose_strategies.py``).

    The first share runs on the calling thread, the others are offered to helper threads shared by
    the process; a share no helper has started when the caller is done (the helpers are busy with
    other conversions) runs on the caller too, so no conversion waits for another's copies.
    Returns (or raises) only when no helper is working on a share any more.
    """
    if threads < 2 or len(shares) < 2:
        for share in shares:
            job(share)
        return
    from concurrent import futures
    helpers = HELPERS.get()
    offered = [(helpers.submit(job, share), share) for share in shares[1:]]
    try:
        job(shares[0])
    finally:
        left = [share for future, share in offered if future.cancel()]
        started = [future for future, _ in offered if not future.cancelled()]
        futures.wait(started)
    for share in left:
        job(share)
    for future in started:
        future.result()


def forget_after_fork() -> None:
    POOL.forget()
    HELPERS.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_after_fork)
