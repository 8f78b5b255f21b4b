"""Start-up: ``weightport --version`` and ``weightport inspect`` of a small file against
``python -c "import numpy, h5py"`` (the interpreter with weightport's core dependencies).

Runs the three commands interleaved, ``--repeat`` times each, and prints the medians and the ratios (the
target of issue 23: within 1.3x).  ``python -X importtime -m weightport --version`` shows what is imported.

Run: ``.venv/bin/python benchmarks/startup.py [--repeat 31]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from bytecode import compile_weightport  # a sibling script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
WEIGHTPORT = os.path.join(os.path.dirname(PYTHON), "weightport")
SMALL = os.path.join(ROOT, "fixtures", "keras3", "cnn_flatten_dense.h5")

COMMANDS = {
    "python -c 'import numpy, h5py'": [PYTHON, "-c", "import numpy, h5py"],
    "weightport --version": [WEIGHTPORT, "--version"],
    "weightport inspect (small .h5)": [WEIGHTPORT, "inspect", SMALL],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=31)
    args = parser.parse_args()
    compile_weightport()
    for command in COMMANDS.values():  # warm the page cache
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    base = statistics.median(next(iter(times.values())))
    print(f"medians of {args.repeat} interleaved runs; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print("| command | median s | min s | x import numpy, h5py |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.3f} | {min(values):.3f} | {statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
