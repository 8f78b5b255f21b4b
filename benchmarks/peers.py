"""weightport beside the tools people use for the same conversions, on the same files.

* Keras -> PyTorch: ``keras.models.load_model`` + ``torch.save`` of the weights, against
  ``weightport convert MODEL.h5 -o out.safetensors``;
* Keras -> ONNX: ``tf2onnx`` (``tf2onnx.convert.from_function`` over the Keras 3 model: its
  ``from_keras`` takes tf.keras 2 models only, and tf_keras cannot read a Keras 3 HDF5 file's config),
  against ``weightport convert MODEL.h5 -o out.onnx`` (a whole graph traced with torch);
* ONNX -> PyTorch: ``onnx2torch.convert`` + ``torch.save(state_dict())``, against
  ``weightport convert MODEL.onnx -o out.safetensors``.  The ResNet50 and VGG16 ONNX files are tf2onnx's
  own outputs from the first step; the 2 GB model is ``big.onnx`` of ``run_benchmarks.py`` (external data).

Models: ``keras.applications.ResNet50`` and ``VGG16`` (``weights=None``) saved by Keras 3 as HDF5, and the
2 GB chain of Gemm layers, made by ``run_benchmarks.py`` in ``--workdir``.  Each command runs in a fresh
process, ``--repeat`` times interleaved with the others, after ``sync`` and with no output file; wall time
and the child's own peak RSS (``wait4``, as ``large_model.py``).  Medians of wall time; peak RSS: the largest.

onnx2torch imports torchvision for two converters (NonMaxSuppression, RoiAlign) these models do not use; where
torchvision is missing (this machine has only a CUDA build for torch 2.13), ``--torchvision-stand-in`` puts a
module of those two names, raising if called, on onnx2torch's path.  None of these peers is a dependency of
weightport.

Run: ``.venv/bin/python benchmarks/peers.py [--repeat 5] [--workdir /tmp/weightport-bench]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from large_model import ENV, MIB, Run, measured  # noqa: E402  (a sibling script, not a package)
from run_benchmarks import make_big_onnx, make_keras_models  # noqa: E402
from bytecode import compile_weightport  # noqa: E402

PYTHON = sys.executable
WEIGHTPORT = os.path.join(os.path.dirname(PYTHON), "weightport")

KERAS_TORCH = (
    "import sys, keras, numpy, torch\n"
    "model = keras.models.load_model(sys.argv[1], compile=False)\n"
    "torch.save({w.path: torch.from_numpy(numpy.array(w)) for w in model.weights}, sys.argv[2])\n")
TF2ONNX = (
    "import sys, keras, tf2onnx, tensorflow as tf\n"
    "model = keras.models.load_model(sys.argv[1], compile=False)\n"
    "spec = (tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name='input'),)\n"
    "function = tf.function(lambda x: model(x, training=False), input_signature=spec)\n"
    "tf2onnx.convert.from_function(function, input_signature=spec, opset=17, output_path=sys.argv[2])\n")
ONNX2TORCH = (
    "import sys, torch, onnx2torch\n"
    "torch.save(onnx2torch.convert(sys.argv[1]).state_dict(), sys.argv[2])\n")
STAND_IN = {
    "__init__.py": '"""Benchmark-only stand-in for onnx2torch\'s two torchvision converters."""\nfrom torchvision import ops\n',
    "ops/__init__.py": "def _missing(*args, **kwargs):\n    raise NotImplementedError('torchvision stand-in')\n\n"
                       "nms = batched_nms = roi_align = _missing\n",
}


# Measured once on this machine (2 CPUs, 24 GB): tf2onnx on VGG16 grew to 23.2 GB of resident memory and was
# killed by the kernel after 331 s; weightport's own ONNX of VGG16 (torch.onnx, which stores VGG16's equal
# zero biases once, behind Identity nodes) is refused by onnx2torch (KeyError 'block1_conv2.bias').  Running
# tf2onnx again would take the memory of everyone on the machine.
NOT_RUN = {"vgg16": "tf2onnx was killed by the kernel's OOM killer at 23.2 GB peak RSS after 331 s (24 GB "
                    "machine), so there is no VGG16 ONNX from it for onnx2torch; onnx2torch refuses torch.onnx's "
                    "VGG16 (`KeyError: 'block1_conv2.bias'`: equal initializers stored once)"}


def versions() -> str:
    names = ["numpy", "h5py", "torch", "tensorflow-cpu", "keras", "onnx", "onnxruntime", "tf2onnx", "onnx2torch",
             "torchvision"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {sys.version.split()[0]}; " + ", ".join(found)


def stand_in(workdir: str) -> str:
    folder = os.path.join(workdir, "stand-in")
    for name, text in STAND_IN.items():
        os.makedirs(os.path.dirname(os.path.join(folder, "torchvision", name)), exist_ok=True)
        with open(os.path.join(folder, "torchvision", name), "w") as handle:
            handle.write(text)
    return folder


def largest_tensor(path: str) -> int:
    from weightport.api import load
    return max(tensor.nbytes for _, _, tensor in load(path).state_keys())


def compare(model: str, output: str, peer_name: str, peer: list[str], workdir: str, repeat: int,
            env_path: str | None) -> list[str]:
    """Rows for weightport and one peer on ``model``, ``repeat`` interleaved runs each."""
    out_dir = os.path.join(workdir, "peer-out")
    ours, theirs = [], []
    env = dict(ENV, PYTHONPATH=env_path) if env_path else None
    for _ in range(repeat):
        for runs, command in ((ours, [WEIGHTPORT, "convert", model, "-o", os.path.join(out_dir, output), "--quiet"]),
                              (theirs, peer + [os.path.join(out_dir, "peer" + os.path.splitext(output)[1])])):
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
            subprocess.run(["sync"], check=True)
            runs.append(measured(command, workdir, env if runs is theirs else None))
    shutil.rmtree(out_dir, ignore_errors=True)
    largest = largest_tensor(model)
    size = sum(os.path.getsize(f) for f in (model, model + ".data") if os.path.exists(f))
    name = f"{os.path.basename(model)} ({size / MIB:.0f} MiB, largest tensor {largest / MIB:.0f} MiB)"

    def row(tool: str, runs: list[Run], versus: float) -> str:
        seconds = statistics.median(r.seconds for r in runs)
        peak = max(r.peak_rss for r in runs)
        return (f"| {name} | {tool} | {seconds:.2f} | {seconds / versus:.1f} | {peak / MIB:.0f} | "
                f"{peak / largest:.2f} |")
    base = statistics.median(r.seconds for r in ours)
    return [row(f"**weightport** -> {output}", ours, base), row(peer_name, theirs, base)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/weightport-bench")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", action="append", choices=["resnet50", "vgg16", "big"])
    parser.add_argument("--torchvision-stand-in", action="store_true")
    args = parser.parse_args()
    compile_weightport()
    os.makedirs(args.workdir, exist_ok=True)
    only = args.only or ["resnet50", "vgg16", "big"]
    make_keras_models(args.workdir)
    path = stand_in(args.workdir) if args.torchvision_stand_in else None
    rows = []
    for name in ("resnet50", "vgg16"):
        if name not in only:
            continue
        h5 = os.path.join(args.workdir, name + ".h5")
        rows += compare(h5, "out.safetensors", "Keras `load_model` + `torch.save`",
                        [PYTHON, "-c", KERAS_TORCH, h5], args.workdir, args.repeat, None)
        if name in NOT_RUN:
            rows.append(f"| {name}.h5 | tf2onnx, then onnx2torch on its output | not run: {NOT_RUN[name]} | | | |")
            continue
        peer_onnx = os.path.join(args.workdir, name + ".tf2onnx.onnx")
        if not os.path.exists(peer_onnx):  # the ONNX file of the third comparison, made by the peer itself
            subprocess.run([PYTHON, "-c", TF2ONNX, h5, peer_onnx], check=True, capture_output=True, env=ENV)
        rows += compare(h5, "out.onnx", "tf2onnx", [PYTHON, "-c", TF2ONNX, h5], args.workdir, args.repeat, None)
        rows += compare(peer_onnx, "out.safetensors", "onnx2torch + `torch.save(state_dict())`",
                        [PYTHON, "-c", ONNX2TORCH, peer_onnx], args.workdir, args.repeat, path)
    if "big" in only:
        make_big_onnx(args.workdir)
        big = os.path.join(args.workdir, "big.onnx")
        rows += compare(big, "out.safetensors", "onnx2torch + `torch.save(state_dict())`",
                        [PYTHON, "-c", ONNX2TORCH, big], args.workdir, args.repeat, path)
    print(versions())
    print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); {args.repeat} runs each")
    print("| model | tool | wall s (median) | x weightport | peak RSS MiB | x largest tensor |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
