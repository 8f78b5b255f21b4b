"""Benchmark weightport's streaming conversion against `cp` and against the framework-loading path.

Generates, in ``--workdir`` (default ``/tmp/weightport-bench``):

* ``vgg16.h5``: ``keras.applications.VGG16(weights=None)`` saved by Keras 3 as
  legacy HDF5 (553 MB; largest tensor fc1's kernel, 25088 x 4096 float32 =
  411 MB, which also needs the Flatten row permutation).
* ``resnet50.h5``: ``keras.applications.ResNet50(weights=None)`` (~100 MB).
* ``big.onnx`` + ``big.onnx.data``: a 2.05 GB chain of five Gemm layers with
  external data (each weight 411 MB, ``transB`` alternating 0 and 1, so half
  the weights are transposed on the way to PyTorch).

For each model it runs, each ``--repeat`` times, as separate processes timed
by ``/usr/bin/time`` (wall seconds and peak resident set size):

* ``cp`` of the model's file(s);
* ``weightport convert MODEL -o out.safetensors --to torch --quiet``;
* the framework path: Keras ``load_model`` + ``torch.save`` of the weights,
  or for ONNX ``onnx2torch.convert`` + ``torch.save`` where onnx2torch is
  installed (else ``onnx.load`` + ``numpy_helper`` + ``torch.save``);
* the in-process conversion time after imports (``weightport.api.convert``).

and prints a Markdown table: medians of wall time, wall time / cp, peak RSS,
peak RSS / largest tensor.  Nothing here is a test; see docs/performance.md.

Run: ``.venv/bin/python benchmarks/run_benchmarks.py [--workdir DIR] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from bytecode import compile_weightport  # a sibling script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


@dataclass
class Run:
    """Wall seconds and peak RSS (bytes) of one timed process."""

    seconds: float
    peak_rss: int


def timed(command: list[str]) -> Run:
    """Run ``command`` under /usr/bin/time; its own output is discarded, a failure is fatal."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", report.name] + command,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(command)}\n{result.stderr[-2000:]}")
        seconds, kilobytes = report.read().split()[-2:]
    return Run(float(seconds), int(kilobytes) * 1024)


def timed_after(before: list[str], command: list[str]) -> Run:
    """``before`` (untimed), then ``command`` timed."""
    subprocess.run(before, check=True, env=ENV)
    return timed(command)


def median_run(command: list[str], repeat: int, before: list[str] | None = None) -> Run:
    """Median wall time and largest peak RSS over ``repeat`` runs (``before`` runs untimed first each time)."""
    runs = []
    for _ in range(repeat):
        if before:
            subprocess.run(before, check=True, env=ENV)
        runs.append(timed(command))
    return Run(statistics.median(r.seconds for r in runs), max(r.peak_rss for r in runs))


def make_keras_models(workdir: str) -> None:
    """VGG16 and ResNet50 with random weights, saved as Keras 3 legacy HDF5 (skipped when present)."""
    wanted = [name for name in ("vgg16", "resnet50") if not os.path.exists(os.path.join(workdir, name + ".h5"))]
    if not wanted:
        return
    script = (
        "import sys, keras\n"
        "for name in sys.argv[2:]:\n"
        "    build = {'vgg16': keras.applications.VGG16, 'resnet50': keras.applications.ResNet50}[name]\n"
        "    build(weights=None).save(f'{sys.argv[1]}/{name}.h5')\n")
    subprocess.run([PYTHON, "-c", script, workdir] + wanted, check=True, env=ENV)


def make_big_onnx(workdir: str, layers: int = 5, wide: int = 25088, narrow: int = 4096) -> None:
    """A chain of Gemm layers whose weights live in ``big.onnx.data`` (written tensor by tensor)."""
    import onnx
    from onnx import TensorProto, helper
    model_path = os.path.join(workdir, "big.onnx")
    if os.path.exists(model_path):
        return
    rng = np.random.default_rng(0)
    initializers, nodes, offset = [], [], 0
    sizes = [wide if k % 2 == 0 else narrow for k in range(layers + 1)]
    with open(model_path + ".data", "wb") as data:
        for k in range(layers):
            n_in, n_out = sizes[k], sizes[k + 1]
            trans_b = k % 2
            shape = (n_out, n_in) if trans_b else (n_in, n_out)
            for name, dims in ((f"W{k}", shape), (f"b{k}", (n_out,))):
                array = rng.standard_normal(dims, dtype=np.float32)
                data.write(array.tobytes())
                tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", "big.onnx.data"), ("offset", str(offset)),
                                   ("length", str(array.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                offset += array.nbytes
                initializers.append(tensor)
            nodes.append(helper.make_node("Gemm", [f"x{k}", f"W{k}", f"b{k}"], [f"x{k + 1}"], transB=trans_b,
                                          name=f"gemm{k}"))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, wide])],
                              [helper.make_tensor_value_info(f"x{layers}", TensorProto.FLOAT, [1, sizes[-1]])],
                              initializers)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)


def largest_tensor(path: str) -> int:
    """Bytes of the largest weight in ``path``, as weightport reads it."""
    sys.path.insert(0, ROOT)
    from weightport.api import load
    return max(tensor.nbytes for _, _, tensor in load(path).state_keys())


KERAS_FRAMEWORK = (
    "import sys, keras, numpy, torch\n"
    "model = keras.models.load_model(sys.argv[1], compile=False)\n"
    "torch.save({w.path: torch.from_numpy(numpy.array(w)) for w in model.weights}, sys.argv[2])\n")

ONNX_FRAMEWORK = (
    "import sys, torch\n"
    "try:\n"
    "    import onnx2torch\n"
    "    torch.save(onnx2torch.convert(sys.argv[1]).state_dict(), sys.argv[2])\n"
    "except ImportError:\n"
    "    import onnx\n"
    "    from onnx import numpy_helper\n"
    "    model = onnx.load(sys.argv[1])\n"
    "    torch.save({t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer},"
    " sys.argv[2])\n")

IN_PROCESS = (
    "import sys, time\n"
    "from weightport.api import convert\n"
    "start = time.perf_counter()\n"
    "convert(sys.argv[1], sys.argv[2], to='torch', force=True)\n"
    "print(f'{time.perf_counter() - start:.3f}')\n")


def in_process_seconds(model: str, out: str, repeat: int, before: list[str]) -> float:
    """Median seconds of ``convert`` itself, imports excluded."""
    times = []
    for _ in range(repeat):
        subprocess.run(before, check=True)
        result = subprocess.run([PYTHON, "-c", IN_PROCESS, model, out], check=True, env=ENV, cwd=ROOT,
                                capture_output=True, text=True)
        times.append(float(result.stdout.split()[-1]))
    return statistics.median(times)


def benchmark(model: str, files: list[str], framework: str, workdir: str, repeat: int) -> list[str]:
    """Table rows for one model."""
    out = os.path.join(workdir, "out.safetensors")
    copy_target = os.path.join(workdir, "copy")
    os.makedirs(copy_target, exist_ok=True)
    size = sum(os.path.getsize(f) for f in files)
    largest = largest_tensor(model)
    weightport = os.path.join(os.path.dirname(PYTHON), "weightport")
    framework_out = os.path.join(workdir, "framework.pt")
    # Every run starts with no output file and no dirty pages, so write-back of an earlier run is not billed.
    clean = ["sh", "-c", f"rm -rf '{out}' '{framework_out}' '{copy_target}'/*; sync"]
    cp = median_run(["cp"] + files + [copy_target + "/"], repeat, clean)
    quoted = " ".join(f"'{f}'" for f in files)
    copies = " ".join(f"'{os.path.join(copy_target, os.path.basename(f))}'" for f in files)
    # the durable copy (cp, then fsync of the copies: `sync FILE`, as weightport fsyncs its output) and
    # weightport alternate, so the machine's load weighs on both alike
    pairs = [(timed_after(clean, ["sh", "-c", f"cp {quoted} '{copy_target}/' && sync {copies}"]),
              timed_after(clean, [weightport, "convert", model, "-o", out, "--to", "torch", "--quiet", "--force"]))
             for _ in range(repeat)]
    cp_sync, ours = (Run(statistics.median(p[k].seconds for p in pairs), max(p[k].peak_rss for p in pairs))
                     for k in (0, 1))
    ratio = statistics.median(b.seconds / a.seconds for a, b in pairs)
    after_imports = in_process_seconds(model, out, repeat, clean)
    frame = median_run([PYTHON, "-c", framework, model, framework_out], repeat, clean)
    subprocess.run(clean, check=True)
    shutil.rmtree(copy_target, ignore_errors=True)
    name = os.path.basename(model)
    mb = 1024 * 1024

    def row(tool: str, run: Run) -> str:
        return (f"| {name} ({size / mb:.0f} MiB, largest {largest / mb:.0f} MiB) | {tool} | {run.seconds:.2f} | "
                f"{run.seconds / max(cp.seconds, 0.01):.1f} | {run.peak_rss / mb:.0f} | {run.peak_rss / largest:.2f} |")
    return [row("cp", cp), row("cp, then sync of the copy (weightport fsyncs its output)", cp_sync),
            row(f"weightport convert ({ratio:.2f}x the durable copy, median of the pairs' ratios)", ours),
            row("framework path", frame),
            f"| {name} | weightport convert, in-process, after imports | {after_imports:.2f} | | | |"]


def baseline_rss(repeat: int) -> Run:
    """Peak RSS of the interpreter with weightport's core imported (numpy, h5py), doing nothing."""
    return median_run([PYTHON, "-c", "import weightport.api, weightport.formats.keras.h5_reader, numpy, h5py"], repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/weightport-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["vgg16", "resnet50", "onnx"], action="append")
    args = parser.parse_args()
    compile_weightport()
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(ROOT)
    only = args.only or ["vgg16", "resnet50", "onnx"]
    if {"vgg16", "resnet50"} & set(only):
        make_keras_models(args.workdir)
    if "onnx" in only:
        make_big_onnx(args.workdir)
    rows = []
    for name in ("vgg16", "resnet50"):
        if name in only:
            rows += benchmark(os.path.join(args.workdir, name + ".h5"), [os.path.join(args.workdir, name + ".h5")],
                              KERAS_FRAMEWORK, args.workdir, args.repeat)
    if "onnx" in only:
        big = os.path.join(args.workdir, "big.onnx")
        rows += benchmark(big, [big, big + ".data"], ONNX_FRAMEWORK, args.workdir, args.repeat)
    base = baseline_rss(args.repeat)
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"interpreter with weightport's core imported: {base.peak_rss / 2**20:.0f} MiB peak RSS, "
          f"{base.seconds:.2f} s")
    print("| model | tool | wall s (median) | x cp | peak RSS MiB | peak RSS / largest tensor |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
