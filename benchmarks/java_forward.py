"""Forward-pass speed of the emitted Java against onnxruntime and torch, one thread each, in one run.

Two models, built in torch with seeded weights and exported to ONNX (the file weightport converts):

* ``cnn64``: a 64x64x3 CNN (conv 3->32, conv 32->32, max pool, conv 32->64, conv 64->64, max pool,
  dense 16384->10): 98 M multiply-adds per sample.
* ``vgg64``: VGG-style, three blocks of two 3x3 convolutions and a max pool (32, 64, 128 channels) on
  64x64x3, then dense 8192->10: 153 M multiply-adds per sample.

Each runtime runs the same input, one sample per call, single-threaded: onnxruntime
(``intra_op_num_threads=1``), torch (``torch.set_num_threads(1)``) and the Java emitted by
``weightport convert --to java --emit-forward`` (one thread, after a JIT warm-up of ``--warmup``
calls).  The figures are medians of ``--repeat`` calls, both wall-clock and CPU time of the calling
thread (on a shared, loaded machine a long call is preempted more often than a short one, so CPU time
compares the work more fairly); the Java output is checked against onnxruntime's.  Usage::

    python benchmarks/java_forward.py [--repeat 30] [--warmup 40] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HARNESS = r'''
package bench;

import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.file.Paths;
import java.util.Arrays;

public final class Bench {
    public static void main(String[] args) throws Exception {
        float[] x = bench.CLASSWeights.readNpy(Paths.get(args[1])).data;
        int warmup = Integer.parseInt(args[2]), repeat = Integer.parseInt(args[3]), threads = Integer.parseInt(args[4]);
        try (bench.CLASS model = new bench.CLASS(bench.CLASSWeights.load(Paths.get(args[0])), threads)) {
            float[] y = null;
            for (int k = 0; k < warmup; k++) {
                y = model.forward(x);
            }
            ThreadMXBean bean = ManagementFactory.getThreadMXBean();
            double[] ms = new double[repeat], cpu = new double[repeat];
            for (int k = 0; k < repeat; k++) {
                long t0 = System.nanoTime(), c0 = bean.getCurrentThreadCpuTime();
                y = model.forward(x);
                cpu[k] = (bean.getCurrentThreadCpuTime() - c0) / 1e6;
                ms[k] = (System.nanoTime() - t0) / 1e6;
            }
            Arrays.sort(ms);
            Arrays.sort(cpu);
            StringBuilder out = new StringBuilder("{\"median_ms\": " + ms[repeat / 2] + ", \"median_cpu_ms\": "
                    + cpu[repeat / 2] + ", \"output\": [");
            for (int k = 0; k < y.length; k++) {
                out.append(k == 0 ? "" : ", ").append(y[k]);
            }
            System.out.println(out.append("]}"));
        }
    }
}
'''


def build(name: str):
    """The torch module of a benchmark model (seeded) and its multiply-adds per sample."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    if name == "cnn64":
        layers = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                  nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                  nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16 * 16, 10)]
    else:
        layers, cin, size = [], 3, 64
        for cout in (32, 64, 128):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2)]
            cin, size = cout, size // 2
        layers += [nn.Flatten(), nn.Linear(cin * size * size, 10)]
    model = nn.Sequential(*layers).eval()
    macs, shape = 0, (3, 64, 64)
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            shape = (layer.out_channels, shape[1], shape[2])
            macs += layer.in_channels * 9 * int(np.prod(shape))
        elif isinstance(layer, nn.MaxPool2d):
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
    return model, macs


def median_ms(call, warmup: int, repeat: int) -> tuple[float, float]:
    """Median wall-clock and median CPU time (of this thread) of one call, in ms."""
    for _ in range(warmup):
        call()
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        call()
        cpu.append((time.thread_time() - c0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def run(name: str, folder: str, args: argparse.Namespace) -> dict:
    import onnxruntime
    import torch
    torch.set_num_threads(1)
    model, macs = build(name)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    onnx_path = os.path.join(folder, f"{name}.onnx")
    torch.onnx.export(model, torch.from_numpy(x), onnx_path, input_names=["x"], output_names=["y"], dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0].reshape(-1)
    ort_ms = median_ms(lambda: session.run(None, {"x": x}), args.warmup, args.repeat)
    with torch.inference_mode():
        tx = torch.from_numpy(x)
        torch_ms = median_ms(lambda: model(tx), args.warmup, args.repeat)
    project = os.path.join(folder, name)
    subprocess.run([sys.executable, "-c", "import sys; from weightport.cli import main; sys.exit(main(sys.argv[1:]))", "convert", onnx_path, "-o", project, "--to", "java",
                    "--emit-forward", "--java-package", "bench", "--java-class", "M" + name.capitalize(), "--quiet"],
                   check=True)
    np.save(os.path.join(folder, f"{name}.input.npy"), x)
    cls = "M" + name.capitalize()
    bench = os.path.join(project, "src", "main", "java", "bench", "Bench.java")
    with open(bench, "w", encoding="utf-8") as handle:
        handle.write(HARNESS.replace("CLASS", cls))
    classes = os.path.join(project, "classes")
    sources = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(project, "src", "main", "java"))
               for f in files if f.endswith(".java")]
    subprocess.run(["javac", "-d", classes, *sources], check=True)
    manifest = os.path.join(project, "src", "main", "resources", "bench", f"{cls}.json")
    result = subprocess.run(["java", "-cp", classes, "bench.Bench", manifest, os.path.join(folder, f"{name}.input.npy"),
                             str(args.warmup), str(args.repeat), str(args.threads)],
                            check=True, capture_output=True, text=True)
    java = json.loads(result.stdout)
    error = float(np.max(np.abs(np.array(java["output"]) - want)) / max(1.0, float(np.max(np.abs(want)))))
    java_ms = (java["median_ms"], java["median_cpu_ms"])
    return {"model": name, "macs_per_sample": macs, "java_threads": args.threads,
            "max_relative_error_vs_onnxruntime": error,
            **{f"{runtime}_{kind}_ms": value[k] for runtime, value in (("onnxruntime", ort_ms), ("torch", torch_ms),
                                                                        ("java", java_ms))
               for k, kind in enumerate(("wall", "cpu"))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="threads for the Java model (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="java_forward-")
    try:
        rows = [run(name, folder, args) for name in ("cnn64", "vgg64")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); medians of {args.repeat} calls "
          f"after {args.warmup} warm-up calls; Java threads: {args.threads}")
    print("| model | M MACs | time | onnxruntime ms | torch ms | Java ms | Java / onnxruntime | Java / torch | Java GMAC/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for kind in ("cpu", "wall"):
            ort, tch, jv = (r[f"{runtime}_{kind}_ms"] for runtime in ("onnxruntime", "torch", "java"))
            print(f"| {r['model']} | {r['macs_per_sample'] / 1e6:.0f} | {kind} | {ort:.2f} | {tch:.2f} | {jv:.2f} | "
                  f"{jv / ort:.1f}x | {jv / tch:.1f}x | {r['macs_per_sample'] / jv / 1e6:.2f} |")
    bad = [r["model"] for r in rows if r["max_relative_error_vs_onnxruntime"] > 1e-4]
    if bad:
        print(f"Java output differs from onnxruntime's for {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
