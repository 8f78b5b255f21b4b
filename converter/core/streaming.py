"""Overlap producing a tensor's blocks (the transpose copy) with writing them (the file write).

NumPy's copies and file writes both release the GIL, so on two cores a
writer thread roughly halves the time of a conversion that must transpose.
:func:`weightport.core.layout.copy_blocks` rotates :data:`~weightport.core.layout.RING`
buffers, and the queue holds one block, so a block is never overwritten
while it is being written.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from weightport.core.blocks import COPY_THREADS, PARALLEL_MIN_BYTES, RING, in_parallel
from weightport.core.errors import BadInputError

if TYPE_CHECKING:
    from weightport.core.plan import PlannedTensor
    from weightport.core.progress import Progress

_DONE = object()
WRITE_SLICE = 1 << 20
"""Bytes per ``write`` call.  Measured on ext4 in a VM (``benchmarks/write_slices.py``): writing 553 MB
from 8 MiB buffers took 0.7-1.2 s in 8 MiB calls against 0.11-0.13 s in 1 MiB calls on one day, and
the same time for every size on another; 1 MiB calls were never the slower (docs/performance.md)."""


def write_in_background(blocks: Iterable[np.ndarray], consume: Callable[[np.ndarray], None]) -> None:
    """Call ``consume(block)`` for every block, in order, on a writer thread while the next block is made.

    A tensor of one block (most tensors of a model with many small ones, e.g. ResNet50's batch-norm
    vectors) is written inline: there is nothing to overlap, and a thread per tensor costs more than
    the write.  An exception in either thread stops both and is raised here.
    """
    iterator = iter(blocks)
    first = next(iterator, _DONE)
    if first is _DONE:
        return
    second = next(iterator, _DONE)  # made while first is still unwritten: fine, RING >= 2
    if second is _DONE:
        consume(first)
        return
    blocks = itertools.chain((first, second), iterator)
    import queue  # here: reading (`inspect`) starts without it
    handoff: queue.Queue = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def writer() -> None:
        while True:
            block = handoff.get()
            if block is _DONE:
                return
            if not failure:
                try:
                    consume(block)
                except BaseException as error:  # handed to the caller below
                    failure.append(error)

    thread = threading.Thread(target=writer, name="weightport-writer", daemon=True)
    thread.start()
    try:
        for block in blocks:
            if failure:
                break
            handoff.put(block)
    finally:
        handoff.put(_DONE)
        thread.join()
    if failure:
        raise failure[0]


def write_bytes(handle: BinaryIO, array: np.ndarray) -> int:
    """Write a C-contiguous array's bytes to ``handle`` in :data:`WRITE_SLICE` calls; returns the count."""
    data = array.reshape(-1).view(np.uint8).data
    written = 0
    first = handle.tell()
    for start in range(0, len(data), WRITE_SLICE):
        written += handle.write(data[start:start + WRITE_SLICE])
    if written >= WRITE_SLICE and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(handle.fileno(), first, written, os.POSIX_FADV_DONTNEED)
    return written


SLICE_BYTES = 8 << 20
CAST_SLICE_BYTES = 4 << 20  # source bytes per cast slice: RING of them in flight (12 MiB), reused


def in_slices(block: np.ndarray, nbytes: int = SLICE_BYTES) -> Iterator[np.ndarray]:
    """A C-contiguous block as flat views of at most ``nbytes`` (a tensor that needed no copy comes as one
    block, a view of the whole source: what is done to it per value, a cast, a digest, goes a slice at a time)."""
    flat = block.reshape(-1)
    step = max(1, nbytes // max(flat.itemsize, 1))
    for start in range(0, max(flat.size, 1), step):
        yield flat[start:start + step]


def stored_slices(item: "PlannedTensor", cast: np.dtype | None = None,
                  overflowed: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """``item``'s values in C order as flat slices, as they are stored: little-endian, or cast to ``cast``.

    Made on the calling thread, so that the cast of one slice runs while the writer thread writes the
    one before (a tensor needing no transpose is one mapped block: sliced, it still overlaps).  Slices
    needing no conversion are views (of :data:`SLICE_BYTES`); converted ones are cast into
    :data:`RING` reused buffers of :data:`CAST_SLICE_BYTES` worth of values (a slice is valid until
    ``RING - 1`` more are made, as the blocks of :func:`~weightport.core.blocks.copy_blocks`), so a
    cast costs no fresh memory per slice.  ``overflowed()`` is called for a slice in which a finite
    value became infinite in a narrower float ``cast`` (e.g. bfloat16 above float16's 65504)."""
    ring: list[np.ndarray] = []
    turn = 0
    for block in item.blocks():
        stored_dtype = np.dtype(cast or block.dtype.newbyteorder("<"))
        if stored_dtype == block.dtype:
            yield from in_slices(np.ascontiguousarray(block))
            continue
        for part in in_slices(block, CAST_SLICE_BYTES):
            size = part.size * stored_dtype.itemsize
            if not ring or ring[0].nbytes < size:
                ring = [np.empty(size, np.uint8) for _ in range(RING)]
            turn = (turn + 1) % RING
            stored = ring[turn][:size].view(stored_dtype)
            with np.errstate(all="ignore"):  # an overflow is the caller's to report, as a warning
                np.copyto(stored, part, casting="unsafe")
                if overflowed is not None and narrows(part.dtype, stored_dtype) and np.isinf(stored).any() \
                        and np.any(np.isfinite(part) & ~np.isfinite(stored)):
                    overflowed()
            yield stored


def narrows(source: np.dtype, stored: np.dtype) -> bool:
    """A float cast into fewer bytes, which can turn large finite values into infinities."""
    return source.kind == "f" and stored.itemsize < source.itemsize


def write_hashed(handle: BinaryIO, array: np.ndarray, digest: Any) -> int:
    """:func:`write_bytes` of ``array`` while ``digest`` (a ``hashlib`` object) hashes the same bytes on a
    helper thread: both release the GIL, and SHA-256 (about 1.1 GB/s here) would otherwise add its time
    to the write's.  Returns the bytes written."""
    written = [0]

    def job(share: str) -> None:
        if share == "write":
            written[0] = write_bytes(handle, array)
        else:
            digest.update(array.reshape(-1).view(np.uint8).data)
    in_parallel(job, ["write", "hash"], COPY_THREADS if array.nbytes >= PARALLEL_MIN_BYTES else 1)
    return written[0]


def write_planned(handle: BinaryIO, item: "PlannedTensor", progress: "Progress", cast: np.dtype | None = None) -> int:
    """Write ``item``'s C-order bytes at ``handle``'s position, slice by slice on a writer thread while the
    next slice is made (:func:`stored_slices`, :func:`write_in_background`), little-endian (or cast to
    ``cast``, e.g. bfloat16 widened to ``<f4``); progress advances per slice.  Memory: the source (a
    memory map where the reader can) and the block buffers, never a copy of the whole tensor.  Returns
    the bytes written, checked against the plan."""
    counted = [0]

    def write_slice(stored: np.ndarray) -> None:
        written = write_bytes(handle, stored)
        counted[0] += written
        progress.advance(item.key, written)

    write_in_background(stored_slices(item, cast), write_slice)
    expected = item.nbytes if cast is None else int(np.prod(item.shape, dtype=np.int64)) * np.dtype(cast).itemsize
    if counted[0] != expected:
        raise BadInputError(f"tensor {item.key} came out as {counted[0]} bytes, planned {expected}")
    return counted[0]
