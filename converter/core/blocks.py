"""The block-copy engine: a strided view (permuted, flipped, over a memory map) copied to C order
in blocks of a few MiB, so a tensor of any size streams through a bounded amount of memory.

See docs/performance.md for the strategy (two-stage tiled transpose) and its measurements.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


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
