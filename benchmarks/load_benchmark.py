"""Load benchmark: K = 1, 2, 4, 8 conversions at once, on threads of one process and on worker processes.

A fixed mixed workload (two rounds of eight jobs: VGG16, ResNet50 and MobileNetV2 saved by Keras 3
as HDF5, and bundled fixtures in Keras 3, ONNX and Theano formats; to safetensors, .pt, plain
arrays and npz) is spread over K workers through one job queue.  Each configuration runs in a fresh
runner process, after a warm-up that imports every framework it uses (in every worker), so the
time is conversion time, not import time.

Reported per configuration (median of ``--repeat`` runs): wall seconds, conversions per second,
source MB converted per second, speed-up over K = 1 of the same kind, CPU seconds spent by the
conversions (all their threads; less sensitive than wall time to other load on the machine), and
peak resident memory:
for threads the runner's own peak (``ru_maxrss``, from ``os.wait4``); for processes the sum of every
worker's peak plus the runner's (spawned workers share no pages, so the sum is what they held).

Run: ``.venv/bin/python benchmarks/load_benchmark.py [--workdir DIR] [--repeat 3] [--ks 1 2 4 8]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
KERAS_MODELS = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}


def fixture(*parts: str) -> str:
    return os.path.join(ROOT, "fixtures", *parts)


def jobs(workdir: str) -> list[tuple[str, str, str]]:
    """One round of the mixed workload: (source, target, output extension)."""
    model = lambda name: os.path.join(workdir, name + ".h5")  # noqa: E731
    return [(model("vgg16"), "torch", ".safetensors"), (model("resnet50"), "torch", ".safetensors"),
            (model("resnet50"), "torch", ".pt"), (model("mobilenet_v2"), "raw", ""),
            (model("mobilenet_v2"), "npz", ".npz"), (fixture("keras3", "cnn_flatten_dense.keras"), "torch", ".safetensors"),
            (fixture("onnx", "torch_cnn.onnx"), "torch", ".pt"), (fixture("theano", "theano_cnn.pkl_utils.zip"), "raw", "")]


def make_models(workdir: str) -> None:
    """The Keras applications models with random weights, saved by Keras 3 as HDF5 (once)."""
    wanted = [name for name in KERAS_MODELS if not os.path.exists(os.path.join(workdir, name + ".h5"))]
    if wanted:
        script = ("import sys, keras\n"
                  "for name, build in zip(sys.argv[2::2], sys.argv[3::2]):\n"
                  "    getattr(keras.applications, build)(weights=None).save(f'{sys.argv[1]}/{name}.h5')\n")
        pairs = [item for name in wanted for item in (name, KERAS_MODELS[name])]
        subprocess.run([PYTHON, "-c", script, workdir] + pairs, check=True, env=ENV, stderr=subprocess.DEVNULL)


# -- runner (one configuration, in its own process) -------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process so far, every thread of it (user + system)."""
    times = os.times()
    return times.user + times.system


def convert_one(job: tuple[str, str, str, str]) -> tuple[int, int, float]:
    """Convert one job; returns this process's id, its peak RSS so far (bytes) and the CPU seconds the
    process spent meanwhile (the conversion's own in a worker process, which runs one at a time)."""
    from weightport import convert
    source, to, output, _ = job
    before = cpu_seconds()
    convert(source, output, to=to, force=True)
    return os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, cpu_seconds() - before


def process_id(_: object) -> int:
    return os.getpid()


def warm_up() -> None:
    """Import what the workload imports (torch for .pt, onnx for ONNX sources) by converting small files."""
    folder = tempfile.mkdtemp(prefix="warm-")
    try:
        for source, to, ext in ((fixture("onnx", "torch_cnn.onnx"), "torch", ".pt"),
                                (fixture("keras3", "cnn_flatten_dense.keras"), "raw", ""),
                                (fixture("theano", "theano_cnn.pkl_utils.zip"), "npz", ".npz")):
            convert_one((source, to, os.path.join(folder, "warm" + ext), ""))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(mode: str, k: int, workdir: str, rounds: int) -> dict[str, float]:
    out = tempfile.mkdtemp(prefix="out-", dir=workdir)
    work = [(source, to, os.path.join(out, f"{n}{ext}"), "") for n, (source, to, ext) in
            enumerate(jobs(workdir) * rounds)]
    try:
        if mode == "threads":
            warm_up()
            pool = ThreadPoolExecutor(k)
        else:
            import multiprocessing
            pool = ProcessPoolExecutor(k, mp_context=multiprocessing.get_context("spawn"), initializer=warm_up)
            list(pool.map(process_id, range(k)))  # every worker started and warmed up before the clock starts
        with pool:
            subprocess.run(["sync"], check=True)
            start, cpu = time.perf_counter(), cpu_seconds()
            reports = list(pool.map(convert_one, work))
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        workers = {pid: peak for pid, peak, _ in reports}  # the last (largest) peak each worker reported
        if mode == "processes":
            cpu = sum(spent for _, _, spent in reports)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        held = own + (sum(workers.values()) if mode == "processes" else 0)
        source_bytes = sum(os.path.getsize(source) for source, _, _, _ in work)
        return {"seconds": seconds, "cpu": cpu, "conversions": len(work), "source_bytes": source_bytes,
                "peak_rss": held}
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- driver -----------------------------------------------------------------------------------------
def configuration(mode: str, k: int, workdir: str, rounds: int) -> dict[str, float]:
    """One configuration in a fresh process (so its peak RSS is its own)."""
    result = subprocess.run([PYTHON, __file__, "--run", mode, str(k), "--workdir", workdir, "--rounds", str(rounds)],
                            env=ENV, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} K={k} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/weightport-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--modes", nargs="+", default=["threads", "processes"], choices=["threads", "processes"])
    parser.add_argument("--run", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.run:
        print(json.dumps(run(args.run[0], int(args.run[1]), args.workdir, args.rounds)))
        return
    make_models(args.workdir)
    runs = {(mode, k): [] for mode in args.modes for k in args.ks}
    for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits every configuration
        for mode, k in runs:
            runs[(mode, k)].append(configuration(mode, k, args.workdir, args.rounds))
    first = runs[next(iter(runs))][0]
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {first['conversions']} conversions of "
          f"{first['source_bytes'] / 1e6:.0f} MB of sources per run; medians of {args.repeat} runs")
    print("| workers | K | wall s | conversions/s | source MB/s | speed-up | CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        base = None
        for k in args.ks:
            seconds = statistics.median(r["seconds"] for r in runs[(mode, k)])
            cpu = statistics.median(r["cpu"] for r in runs[(mode, k)])
            peak = max(r["peak_rss"] for r in runs[(mode, k)])
            base = base or seconds
            print(f"| {mode} | {k} | {seconds:.2f} | {first['conversions'] / seconds:.1f} | "
                  f"{first['source_bytes'] / 1e6 / seconds:.0f} | {base / seconds:.2f} | {cpu:.1f} | {peak / 2**20:.0f} |")


if __name__ == "__main__":
    main()
