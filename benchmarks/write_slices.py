"""How many bytes per ``write`` call: time writing a file from reused 8 MiB buffers in slices of each size.

weightport's writers hand each 8 MiB block to ``weightport.core.streaming.write_bytes``, which writes it in
``WRITE_SLICE`` pieces; this script is the measurement behind that constant.  Each run writes a fresh
file (``--mib`` MiB) after ``sync``, then deletes it; the table gives the median of ``--repeat`` runs
per slice size, the sizes interleaved so that the machine's state drifts alike for all of them.

Run: ``.venv/bin/python benchmarks/write_slices.py [--mib 553] [--repeat 3] [--workdir /tmp]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import numpy as np

SLICES = [128 << 10, 1 << 20, 8 << 20]
BLOCK = 8 << 20


def write_file(path: str, total: int, slice_bytes: int, blocks: list[np.ndarray]) -> float:
    """Seconds to write ``total`` bytes to a new file, ``slice_bytes`` per call, from the ``blocks`` in turn."""
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    with open(path, "wb") as handle:
        written = 0
        while written < total:
            data = blocks[(written // BLOCK) % len(blocks)].data
            for offset in range(0, min(BLOCK, total - written), slice_bytes):
                written += handle.write(data[offset:offset + min(slice_bytes, total - written)])
    seconds = time.perf_counter() - start
    os.unlink(path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=553)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp")
    args = parser.parse_args()
    blocks = [np.random.default_rng(k).integers(0, 255, BLOCK, dtype=np.uint8) for k in range(3)]
    path = os.path.join(args.workdir, "weightport-write-slices.bin")
    times: dict[int, list[float]] = {size: [] for size in SLICES}
    for _ in range(args.repeat):
        for size in SLICES:
            times[size].append(write_file(path, args.mib << 20, size, blocks))
    print(f"| bytes per write call | s to write {args.mib} MiB (median of {args.repeat}) |")
    print("|---|---|")
    for size in SLICES:
        print(f"| {size >> 10} KiB | {statistics.median(times[size]):.3f} |")


if __name__ == "__main__":
    main()
