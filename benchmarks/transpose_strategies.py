"""Measure ways to materialize the one expensive relayout of VGG16: fc1's kernel after Flatten.

Keras stores it as ``(h w c) o`` = (25088, 4096) float32 (411 MB); PyTorch
wants ``o (c h w)``: a transpose combined with a row permutation.  Strategies:

* ``numpy full copy``: ``np.ascontiguousarray`` of the permuted view (fresh 411 MB output);
* ``numpy blocks``: the same view copied 64 output rows at a time into one reused buffer;
* ``weightport copy_blocks``: :func:`weightport.core.blocks.copy_blocks` (two-stage tiled transpose,
  the conversion's reused buffers), what the writers use.

Each prints the best of ``--repeat`` wall times; all produce the same bytes (checked).
Run: ``.venv/bin/python benchmarks/transpose_strategies.py``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from weightport.core.layout import elementary_view, Layout  # noqa: E402
from weightport.core.blocks import conversion_buffers, copy_blocks  # noqa: E402


def best_of(repeat: int, run: Callable[[], str]) -> tuple[float, str]:
    """Best wall time of ``run`` and the digest it returned."""
    times, digest = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        digest = run()
        times.append(time.perf_counter() - start)
    return min(times), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kernel = np.random.default_rng(0).standard_normal((25088, 4096), dtype=np.float32)
    view = elementary_view(kernel, Layout("(h w c) o"), Layout("o (c h w)"), {"h": 7, "w": 7, "c": 512})

    def full_copy() -> str:
        return hashlib.sha1(np.ascontiguousarray(view).data).hexdigest()

    buffer = np.empty((64,) + view.shape[1:], np.float32)

    def numpy_blocks() -> str:
        digest = hashlib.sha1()
        for start in range(0, view.shape[0], 64):
            np.copyto(buffer, view[start:start + 64])
            digest.update(buffer.data)
        return digest.hexdigest()

    def weightport_blocks() -> str:
        digest = hashlib.sha1()
        with conversion_buffers():  # as in a conversion: the pool's warm buffers after the first run
            for block in copy_blocks(view):
                digest.update(np.ascontiguousarray(block).data)
        return digest.hexdigest()

    start = time.perf_counter()
    hashlib.sha1(kernel.data).hexdigest()
    hashing = time.perf_counter() - start
    results = [(name, *best_of(args.repeat, run)) for name, run in
               (("numpy full copy", full_copy), ("numpy blocks of 64 rows", numpy_blocks),
                ("weightport copy_blocks", weightport_blocks))]
    if len({digest for _, _, digest in results}) != 1:
        raise SystemExit("strategies disagree on the bytes")
    print(f"fc1 kernel {kernel.nbytes / 2**20:.0f} MiB; SHA-1 of the bytes alone takes {hashing:.2f} s (included below)")
    for name, seconds, _ in results:
        print(f"{name:28s} {seconds:.2f} s")


if __name__ == "__main__":
    main()
