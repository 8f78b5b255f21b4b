"""Models of tens of GB: weightport's wall time against a durable copy of the same bytes, its peak RSS
against the largest tensor.

The model is LLM-shaped (Llama-2-13B's matrices: hidden 5120, MLP 13824, vocabulary 32000): per block
``self_attn.{q,k,v,o}_proj.weight`` (5120 x 5120, 52 MB in 16 bits) and ``mlp.{gate,up,down}_proj.weight``
(13824 x 5120, 142 MB), plus ``lm_head.weight`` (32000 x 5120, 328 MB, the largest tensor); blocks
alternate float16 and bfloat16.  ``--size-gb N`` sets the number of blocks (about 0.6 GB each), so the
tensor count grows with N and the tensor sizes stay those of a real model; below 1 GB every dimension
shrinks by the same factor (the test suite runs a few MB).  Values: seeded normal(0, 0.02).

Each source is built once, used, and deleted before the next (the disk is shared):

* ``safetensors``: Hugging Face's sharded layout (``model-0000K-of-0000N.safetensors``, 5 GB shards,
  ``model.safetensors.index.json``);
* ``onnx``: one ``Gemm`` (``transB=1``, weights stored ``out x in`` as torch.onnx exports ``nn.Linear``) per
  matrix, all weights in ``model.onnx.data``.

Each is converted, in a fresh process, to sharded safetensors, ONNX with external data (``--template``:
the ONNX model itself, or for the safetensors source the same graph over a sparse data file, which takes no
disk), Keras 3 ``.weights.h5`` (for the state dict with ``--arch``: the model's torch module, which weightport
builds on torch's meta device, so it costs no memory) and plain
arrays (``--to raw --dtype float16 --byte-order little``, the source's size; bfloat16 values become
float16).  Each weightport run is paired with a durable copy of the source's bytes (``cp`` of the files,
then ``sync`` of the copies: fsync, as weightport does before its rename), the two interleaved, each output
deleted and the disk synced before the next run.  Peak RSS is the child's own ``ru_maxrss`` (``wait4``
from a small launcher, as ``tests/security/hostile.py`` does).

Run: ``.venv/bin/python benchmarks/large_model.py --size-gb 20 [--repeat 1] [--workdir DIR]``
(refuses to start unless the source, one output and ``--margin-gb`` fit the free space).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable
WEIGHTPORT = os.path.join(os.path.dirname(PYTHON), "weightport")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
GB = 1000**3
MIB = 1 << 20
HIDDEN, MLP, VOCAB = 5120, 13824, 32000
SHARD_BYTES = 5 * GB

# A launcher of a few MiB starts the command and reports that child's own peak RSS (wait4), so neither
# this script's memory nor the launcher's is counted.
LAUNCH = (
    "import json, os, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "seconds = time.perf_counter() - start\n"
    "error = child.stderr.read().decode('utf-8', 'replace')[-2000:]\n"
    "with open(sys.argv[1], 'w') as report:\n"
    "    json.dump({'code': os.waitstatus_to_exitcode(status), 'seconds': seconds,\n"
    "               'maxrss': usage.ru_maxrss * 1024, 'stderr': error}, report)\n")


@dataclass
class Run:
    """Wall seconds and peak RSS (bytes) of one command."""

    seconds: float
    peak_rss: int


def measured(command: list[str], workdir: str, env: dict[str, str] | None = None) -> Run:
    """Run ``command`` under the launcher; a failure stops the benchmark with its message."""
    report = os.path.join(workdir, "run.json")
    subprocess.run([PYTHON, "-c", LAUNCH, report] + command, check=True, env=env or ENV)
    with open(report) as handle:
        result = json.load(handle)
    os.unlink(report)
    if result["code"] != 0:
        raise SystemExit(f"benchmark command failed ({result['code']}): {' '.join(command)}\n{result['stderr']}")
    return Run(result["seconds"], result["maxrss"])


@dataclass(frozen=True)
class Matrix:
    """One 2-D weight: its key (Hugging Face's), shape (out, in) and dtype name."""

    key: str
    shape: tuple[int, int]
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 2


def llm_matrices(size_gb: float) -> list[Matrix]:
    """The weights of an LLM-shaped model of about ``size_gb`` GB (see the module docstring)."""
    scale = min(1.0, math.sqrt(size_gb))  # below 1 GB every dimension shrinks
    hidden, mlp, vocab = (max(8, int(n * scale) // 8 * 8) for n in (HIDDEN, MLP, VOCAB))
    per_block = (4 * hidden * hidden + 3 * mlp * hidden) * 2
    blocks = max(1, round((size_gb * GB - vocab * hidden * 2) / per_block))
    matrices = []
    for block in range(blocks):
        dtype = "float16" if block % 2 == 0 else "bfloat16"
        prefix = f"model.layers.{block}"
        for name in ("q", "k", "v", "o"):
            matrices.append(Matrix(f"{prefix}.self_attn.{name}_proj.weight", (hidden, hidden), dtype))
        matrices.append(Matrix(f"{prefix}.mlp.gate_proj.weight", (mlp, hidden), dtype))
        matrices.append(Matrix(f"{prefix}.mlp.up_proj.weight", (mlp, hidden), dtype))
        matrices.append(Matrix(f"{prefix}.mlp.down_proj.weight", (hidden, mlp), dtype))
    matrices.append(Matrix("lm_head.weight", (vocab, hidden), "float16"))
    return matrices


POOL_ELEMENTS = 16 << 20  # 32 MiB of 16-bit values, rotated per tensor: fast to write, never one value twice in a row


def value_pools(seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded normal(0, 0.02) values as float16 and as bfloat16 bit patterns (uint16)."""
    values = np.random.default_rng(seed).standard_normal(POOL_ELEMENTS, dtype=np.float32) * np.float32(0.02)
    bfloat16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation: a valid bfloat16 of each value
    return {"float16": values.astype(np.float16).view(np.uint16), "bfloat16": bfloat16}


def write_values(handle, matrix: Matrix, pools: dict[str, np.ndarray], index: int) -> None:
    """``matrix``'s bytes: its dtype's pool, started at an offset of its own, repeated to its size."""
    pool = pools[matrix.dtype]
    start = (index * 7_919_993) % pool.size
    rotated = np.concatenate([pool[start:], pool[:start]]).view(np.uint8)
    left = matrix.nbytes
    while left:
        part = rotated[:min(left, rotated.size)]
        handle.write(part.data)
        left -= part.size


def build_safetensors(folder: str, matrices: list[Matrix]) -> list[str]:
    """Hugging Face's sharded layout; returns the index path and the shards."""
    codes = {"float16": "F16", "bfloat16": "BF16"}
    shards: list[list[Matrix]] = [[]]
    size = 0
    for matrix in matrices:
        if shards[-1] and size + matrix.nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(matrix)
        size += matrix.nbytes
    pools = value_pools()
    names, weight_map, index = [], {}, 0
    for number, items in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for matrix in items:
            header[matrix.key] = {"dtype": codes[matrix.dtype], "shape": list(matrix.shape),
                                  "data_offsets": [offset, offset + matrix.nbytes]}
            offset += matrix.nbytes
            weight_map[matrix.key] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            for matrix in items:
                write_values(handle, matrix, pools, index)
                index += 1
        names.append(os.path.join(folder, name))
    index_path = os.path.join(folder, "model.safetensors.index.json")
    with open(index_path, "w") as handle:
        json.dump({"metadata": {"total_size": sum(m.nbytes for m in matrices)}, "weight_map": weight_map}, handle)
    return [index_path] + names


def onnx_graph(matrices: list[Matrix], data_name: str) -> "object":
    """One Gemm (``transB=1``) per matrix, each weight ``out x in`` in ``data_name``, back to back."""
    from onnx import TensorProto, helper
    types = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
    inputs, nodes, initializers, outputs, offset = {}, [], [], [], 0
    for matrix in matrices:
        n_out, n_in = matrix.shape
        feed = f"x_{matrix.dtype}_{n_in}"
        inputs.setdefault(feed, helper.make_tensor_value_info(feed, types[matrix.dtype], [1, n_in]))
        tensor = TensorProto(name=matrix.key, data_type=types[matrix.dtype], dims=[n_out, n_in])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(matrix.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += matrix.nbytes
        initializers.append(tensor)
        out = matrix.key[:-len(".weight")] + ".out"
        nodes.append(helper.make_node("Gemm", [feed, matrix.key], [out], transB=1, name=matrix.key[:-len(".weight")]))
        outputs.append(helper.make_tensor_value_info(out, types[matrix.dtype], [1, n_out]))
    graph = helper.make_graph(nodes, "llm", list(inputs.values()), outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def build_onnx(folder: str, matrices: list[Matrix], name: str = "model.onnx", sparse: bool = False) -> list[str]:
    """The ONNX model and its data file (``sparse``: a file of the right size holding no blocks, for a
    ``--template`` whose values are never read)."""
    import onnx
    path = os.path.join(folder, name)
    onnx.save_model(onnx_graph(matrices, name + ".data"), path)
    with open(path + ".data", "wb") as handle:
        if sparse:
            handle.truncate(sum(m.nbytes for m in matrices))
        else:
            pools = value_pools()
            for index, matrix in enumerate(matrices):
                write_values(handle, matrix, pools, index)
    return [path, path + ".data"]


ARCH = """import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, hidden, mlp, dtype):
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q", "k", "v", "o"):
            setattr(self.self_attn, name + "_proj", nn.Linear(hidden, hidden, bias=False, dtype=dtype))
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(hidden, mlp, bias=False, dtype=dtype)
        self.mlp.up_proj = nn.Linear(hidden, mlp, bias=False, dtype=dtype)
        self.mlp.down_proj = nn.Linear(mlp, hidden, bias=False, dtype=dtype)


class LLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(Block(HIDDEN, MLP, torch.float16 if k % 2 == 0 else torch.bfloat16)
                                          for k in range(BLOCKS))
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False, dtype=torch.float16)
"""


def write_arch(folder: str, matrices: list[Matrix]) -> str:
    """The model's torch module (what a Hugging Face user has), for ``--arch``: ``FILE.py:LLM``."""
    hidden, mlp, vocab = matrices[0].shape[1], matrices[4].shape[0], matrices[-1].shape[0]
    blocks = sum(1 for m in matrices if m.key.endswith("q_proj.weight"))
    path = os.path.join(folder, "llm_arch.py")
    with open(path, "w") as handle:
        handle.write(f"HIDDEN, MLP, VOCAB, BLOCKS = {hidden}, {mlp}, {vocab}, {blocks}\n" + ARCH)
    return path + ":LLM"


TARGETS = {  # name -> (output name, extra options)
    "safetensors": ("out/model.safetensors.index.json", ["--max-shard-size", "5GB"]),
    "onnx": ("out/model.onnx", ["--to", "onnx"]),
    "keras": ("out/model.weights.h5", ["--to", "keras"]),
    "raw": ("out/raw", ["--to", "raw", "--dtype", "float16", "--byte-order", "little"]),
}


def clean(workdir: str) -> None:
    """No output, no copy, nothing dirty: the next run pays for its own writes only."""
    for name in ("out", "copy"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        os.makedirs(os.path.join(workdir, name))
    subprocess.run(["sync"], check=True)


def durable_copy(files: list[str], workdir: str) -> Run:
    """``cp`` of the files, then ``sync`` of the copies (each fsynced, as weightport fsyncs its output)."""
    folder = os.path.join(workdir, "copy")
    copies = [os.path.join(folder, os.path.basename(f)) for f in files]
    return measured(["sh", "-c", 'cp "$@" && sync ' + " ".join(f"'{c}'" for c in copies), "sh"] + files + [folder],
                    workdir)


def bench_source(source: str, files: list[str], template: str | None, arch: str | None, workdir: str,
                 targets: list[str], repeat: int, largest: int, load: list[str]) -> list[dict]:
    """Rows for one source: every target, ``repeat`` interleaved pairs (durable copy, weightport)."""
    rows = []
    size = sum(os.path.getsize(f) for f in files)
    for target in targets:
        output, extra = TARGETS[target]
        if target == "keras" and arch:  # a state dict's layer kinds: the torch module, built on the meta device
            extra = extra + ["--arch", arch]
        if target == "onnx":
            extra = extra + ["--template", template or source]
        ours, floor = [], []
        for _ in range(repeat):
            clean(workdir)
            floor.append(durable_copy(files, workdir))
            clean(workdir)
            ours.append(measured([WEIGHTPORT, "convert", source, "-o", os.path.join(workdir, output), "--quiet",
                                  *extra], workdir))
            load.append(open("/proc/loadavg").read().split()[0])
        written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(workdir, "out"))
                      for f in fs)
        clean(workdir)
        seconds = statistics.median(r.seconds for r in ours)
        copy_seconds = statistics.median(r.seconds for r in floor)
        peak = max(r.peak_rss for r in ours)
        rows.append({"source": os.path.basename(source), "target": target, "source_bytes": size,
                     "written_bytes": written, "seconds": seconds, "copy_seconds": copy_seconds,
                     "ratio": seconds / copy_seconds, "peak_rss": peak, "peak_ratio": peak / largest,
                     "runs": repeat})
    return rows


def check_space(workdir: str, size_gb: float, margin_gb: float) -> None:
    """Source + one output (+ the durable copy, never beside the output) + the margin must fit."""
    free = shutil.disk_usage(workdir).free
    needed = 2 * size_gb * GB * 1.02 + margin_gb * GB
    if needed > free:
        raise SystemExit(f"--size-gb {size_gb}: needs {needed / GB:.1f} GB (source, one output, "
                         f"{margin_gb} GB margin), {free / GB:.1f} GB free in {workdir}")


def table(rows: list[dict], largest: int) -> str:
    lines = ["| source | target | GB read | GB written | weightport s | durable copy s | x durable copy | "
             "peak RSS MiB | x largest tensor |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['source']} | {row['target']} | {row['source_bytes'] / GB:.2f} | "
                     f"{row['written_bytes'] / GB:.2f} | {row['seconds']:.2f} | {row['copy_seconds']:.2f} | "
                     f"{row['ratio']:.2f} | {row['peak_rss'] / MIB:.0f} | {row['peak_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, required=True, help="model size in GB (1e9 bytes)")
    parser.add_argument("--workdir", default="/tmp/weightport-large")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved pairs per row (median reported)")
    parser.add_argument("--margin-gb", type=float, default=6.0, help="free space left untouched")
    parser.add_argument("--sources", default="safetensors,onnx")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    check_space(args.workdir, args.size_gb, args.margin_gb)
    matrices = llm_matrices(args.size_gb)
    largest = max(m.nbytes for m in matrices)
    targets = args.targets.split(",")
    load: list[str] = [open("/proc/loadavg").read().split()[0]]
    rows: list[dict] = []
    for source_kind in args.sources.split(","):
        source_dir = os.path.join(args.workdir, "source")
        shutil.rmtree(source_dir, ignore_errors=True)
        os.makedirs(source_dir)
        started = time.perf_counter()
        template = None
        if source_kind == "safetensors":
            files = build_safetensors(source_dir, matrices)
            template = build_onnx(source_dir, matrices, "template.onnx", sparse=True)[0]
        else:
            files = build_onnx(source_dir, matrices)
        print(f"built {source_kind}: {sum(os.path.getsize(f) for f in files) / GB:.2f} GB in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        arch = write_arch(source_dir, matrices) if source_kind == "safetensors" else None
        rows += bench_source(files[0], files, template, arch, args.workdir, targets, args.repeat, largest, load)
        shutil.rmtree(source_dir, ignore_errors=True)
    for name in ("out", "copy"):  # only what this script made
        shutil.rmtree(os.path.join(args.workdir, name), ignore_errors=True)
    print(f"{len(matrices)} tensors, {sum(m.nbytes for m in matrices) / GB:.2f} GB, largest {largest / MIB:.0f} MiB; "
          f"load average (1 min) during the runs: {', '.join(load)}; {os.cpu_count()} CPUs")
    print(table(rows, largest))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"tensors": len(matrices), "largest": largest, "load": load, "rows": rows}, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
