"""Where the time of one conversion goes: start-up, imports, reading, planning, copying (transposes),
writing, fsync and rename, each timed in the converting process itself.

The phases are timed by wrapping the functions that do them (nothing in weightport is changed):

* ``interpreter``: a separate ``python -c "import numpy, h5py"`` (the floor every run pays);
* ``import weightport``: ``weightport.api`` and the format registry, after NumPy and h5py;
* ``read``: the reader building the canonical model (``api.load``);
* ``plan``: everything in ``api.save`` before the first tensor byte (the target's plan, header, free space);
* ``copy``: :meth:`BlockBuffers.copy` (the transposes; main thread, with its helper thread);
* ``write``: :func:`weightport.core.streaming.write_bytes` (``write`` calls and the writeback hint), on
  whichever thread it runs (the writer thread overlaps it with ``copy``);
* ``fsync``: ``os.fsync`` of the output; ``rename``: the atomic move into place.

``copy`` and ``write`` overlap, so the phases add up to more than the wall time of the ``save`` step;
``save wall`` is that step's wall time.  Every run starts after ``sync`` with no output file; the durable
copy (``cp`` then ``sync`` of the copy) of the same file is timed between runs for the ratio.

Run: ``.venv/bin/python benchmarks/breakdown.py /tmp/weightport-bench/vgg16.h5 --to torch --repeat 5``
(``run_benchmarks.py`` makes ``vgg16.h5``).  With ``--child`` it is the timed process itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bytecode import compile_weightport  # a sibling script

HERE = os.path.dirname(os.path.abspath(__file__))
PHASES = ["interpreter", "import numpy, h5py (in process)", "import weightport", "read", "plan", "copy", "write",
          "fsync", "rename", "save wall", "process wall"]


def child(source: str, output: str, to: str) -> None:
    """The timed conversion: prints one JSON object of phase seconds on stdout."""
    started = time.perf_counter()
    import numpy  # noqa: F401  (the interpreter floor is measured separately)
    import h5py  # noqa: F401
    floor = time.perf_counter()
    import weightport.api as api
    import weightport.core.blocks as blocks
    import weightport.core.streaming as streaming
    import weightport.formats  # noqa: F401
    imported = time.perf_counter()
    spent = {"copy": 0.0, "write": 0.0, "fsync": 0.0, "rename": 0.0, "first byte": None}

    def timing(name: str, function):
        def timed(*args, **kwargs):
            begin = time.perf_counter()
            if name == "write" and spent["first byte"] is None:
                spent["first byte"] = begin
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - begin
        return timed

    blocks.BlockBuffers.copy = timing("copy", blocks.BlockBuffers.copy)
    streaming.write_bytes = timing("write", streaming.write_bytes)
    os.fsync = timing("fsync", os.fsync)
    os.replace = timing("rename", os.replace)
    os.rename = timing("rename", os.rename)
    model = api.load(source)
    loaded = time.perf_counter()
    api.save(model, output, to=to, quiet=True)
    saved = time.perf_counter()
    first = spent.pop("first byte") or saved
    print(json.dumps({"import numpy, h5py (in process)": floor - started, "import weightport": imported - floor,
                      "read": loaded - imported, "plan": first - loaded, "copy": spent["copy"],
                      "write": spent["write"], "fsync": spent["fsync"], "rename": spent["rename"],
                      "save wall": saved - loaded}))


def durable_copy(source: str, scratch: str) -> float:
    """Seconds of ``cp`` then ``sync`` of the copy, after ``sync``."""
    subprocess.run(["sync"], check=True)
    begin = time.perf_counter()
    subprocess.run(["cp", source, scratch], check=True)
    subprocess.run(["sync", scratch], check=True)
    seconds = time.perf_counter() - begin
    os.remove(scratch)
    return seconds


def one_run(source: str, output: str, to: str) -> dict[str, float]:
    if os.path.exists(output):
        os.remove(output)
    subprocess.run(["sync"], check=True)
    begin = time.perf_counter()
    shown = subprocess.run([sys.executable, __file__, "--child", source, "-o", output, "--to", to],
                           check=True, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - begin
    phases = json.loads(shown.stdout.strip().splitlines()[-1])
    phases["process wall"] = wall
    os.remove(output)
    subprocess.run(["sync"], check=True)
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy, h5py"], check=True)
    phases["interpreter"] = time.perf_counter() - begin
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("-o", "--output", default=None)
    parser.add_argument("--to", default="torch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.source)), "breakdown.out.safetensors")
    if args.child:
        child(args.source, output, args.to)
        return
    compile_weightport()
    runs, copies = [], []
    for _ in range(args.repeat):
        copies.append(durable_copy(args.source, output + ".cp"))
        runs.append(one_run(args.source, output, args.to))
    floor = statistics.median(copies)
    print(f"{args.source} -> --to {args.to}, medians of {args.repeat} runs, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"durable copy: {floor:.3f} s")
    print("| phase | median s | min s |")
    print("|---|---|---|")
    for name in PHASES:
        values = [run[name] for run in runs]
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} |")
    ratios = [run["process wall"] / c for run, c in zip(runs, copies)]
    print(f"process wall / durable copy: median {statistics.median(ratios):.2f} (pairs)")


if __name__ == "__main__":
    main()
