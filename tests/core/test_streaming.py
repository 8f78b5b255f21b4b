"""Streaming: a conversion's memory is bounded by its largest tensor, not by the model.

Models are made by Keras 3 itself; peak resident memory is the child
process's own ``ru_maxrss`` (``os.wait4``), so the numbers are the kernel's.
The old way (read a tensor, then transpose a full copy) needs the model's
largest tensor twice; streaming needs it once (a memory map) plus two small
block buffers.  Speed is measured by benchmarks/, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import fixture_path, require

WEIGHTPORT = os.path.join(os.path.dirname(sys.executable), "weightport")
MIB = 1024 * 1024


# Measured from a small wrapper process: a child forked straight from pytest (which holds TensorFlow)
# would count pytest's pages in its own peak until it execs.
MEASURE = (
    "import os, subprocess, sys\n"
    "process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(process.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)\n")


def peak_rss_of(command: list[str]) -> int:
    """Run ``command`` and return its peak resident set size in bytes (fails the test if it fails)."""
    result = subprocess.run([sys.executable, "-c", MEASURE] + command, capture_output=True, text=True)
    code, peak = result.stdout.split()
    assert code == "0", result.stderr
    return int(peak)


def dense_chain(path: str, widths: list[int]) -> "object":
    """A Keras 3 model of Dense layers of ``widths`` (first entry: input width), saved to ``path`` as HDF5."""
    keras = require("keras")
    keras.utils.set_random_seed(3)
    inputs = keras.Input((widths[0],))
    x = inputs
    for width in widths[1:]:
        x = keras.layers.Dense(width)(x)
    model = keras.Model(inputs, x)
    model.save(path)
    return model


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of converting a tiny model: the interpreter and imports."""
    out = tmp_path_factory.mktemp("baseline") / "tiny.safetensors"
    return peak_rss_of([WEIGHTPORT, "convert", fixture_path("keras3", "cnn_flatten_dense.h5"), "-o", str(out),
                        "--to", "torch", "--quiet"])


@pytest.mark.parametrize("widths", [[6000, 5000, 7], [6000, 5000, 6000, 5000, 7]], ids=["one-big", "three-big"])
def test_peak_memory_is_bounded_by_the_largest_tensor(tmp_path, baseline, widths):
    source = str(tmp_path / "model.h5")
    model = dense_chain(source, widths)
    largest = 6000 * 5000 * 4  # 114 MiB, however many such layers the model has
    out = str(tmp_path / "model.safetensors")
    peak = peak_rss_of([WEIGHTPORT, "convert", source, "-o", out, "--to", "torch", "--quiet"])
    # A full transposed copy per tensor would need 2x the largest tensor above the baseline.
    assert peak - baseline < 1.4 * largest, (
        f"peak {peak / MIB:.0f} MiB, baseline {baseline / MIB:.0f} MiB, largest tensor {largest / MIB:.0f} MiB")

    # and the streamed weights are right: PyTorch reproduces Keras on a random input
    torch = require("torch")
    from safetensors.torch import load_file
    state = load_file(out)
    x = np.random.default_rng(4).standard_normal((2, widths[0])).astype(np.float32)
    expected = np.asarray(model(x))
    y = torch.from_numpy(x)
    for k in range(len(widths) - 1):
        name = model.layers[k + 1].name
        y = torch.nn.functional.linear(y, state[f"{name}.weight"], state[f"{name}.bias"])
    # Each output is two to four 5000-6000-term float32 dot products that Keras and torch block and add in
    # different orders. Measured: 2.8e-6 on outputs up to 3 (10 float32 ulps of the scale; each framework is
    # within 2.4e-6 of a float64 reference). A 6000-term sum's rounding grows like sqrt(6000) ~ 77 ulps of
    # its terms; allow 64 ulps of the output scale (2.3e-5 here), 8x the measured error.
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)


def terminal_stderr(args: list[str], interval: str = "0.1") -> bytes:
    """What ``weightport ARGS`` draws on a terminal (a pty as stderr), progress shown from the start."""
    import pty
    primary, secondary = pty.openpty()
    process = subprocess.Popen([WEIGHTPORT, *args], stdout=subprocess.DEVNULL, stderr=secondary,
                               env=dict(os.environ, WEIGHTPORT_PROGRESS_DELAY="0",
                                        WEIGHTPORT_PROGRESS_INTERVAL=interval))
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait() == 0, shown[-300:]
    return shown


def test_progress_moves_inside_one_large_tensor(tmp_path):
    """One 96 MB tensor: the line advances block by block (percentages below 99 while that tensor
    is written: three or more), with a rate and the time left."""
    import re
    source = str(tmp_path / "one.h5")
    dense_chain(source, [4000, 6000])
    shown = terminal_stderr(["convert", source, "-o", str(tmp_path / "one.safetensors")], interval="0")
    shown = shown.decode("utf-8", "replace")
    steps = re.findall(r"(\d+\.\d)% [^\r]*?/s, \d+ s left  dense\w*\.weight", shown)
    assert len({float(p) for p in steps if float(p) < 99.0}) >= 3, shown[-500:]  # per tensor: one at most


def test_progress_line_only_on_a_terminal(tmp_path):
    """--quiet or a pipe: no progress line; a terminal (pty) over half a second: a line with bytes."""
    source = str(tmp_path / "model.h5")
    dense_chain(source, [6000, 5000, 6000, 5000, 7])
    piped = subprocess.run([WEIGHTPORT, "convert", source, "-o", str(tmp_path / "a.safetensors")],
                           capture_output=True, text=True)
    assert piped.returncode == 0 and "%" not in piped.stderr
    shown = terminal_stderr(["convert", source, "-o", str(tmp_path / "b.safetensors")])
    assert b"MiB" in shown and b"%" in shown, shown[-300:]


def onnx_gemm_chain(path: str, widths: list[int]) -> None:
    """Gemm layers (``transB=1``: weights ``out x in``) of ``widths``, every weight in ``NAME.data``, saved by onnx."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    nodes, weights = [], []
    for k, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        weights.append(numpy_helper.from_array(rng.standard_normal((n_out, n_in), dtype=np.float32), f"w{k}"))
        nodes.append(helper.make_node("Gemm", [f"x{k}", f"w{k}"], [f"x{k + 1}"], transB=1, name=f"dense{k}"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, widths[0]])],
                              [helper.make_tensor_value_info(f"x{len(widths) - 1}", TensorProto.FLOAT,
                                                             [1, widths[-1]])], weights)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=0)


@pytest.mark.parametrize("target", ["onnx", "keras", "raw"])
def test_onnx_keras_and_raw_outputs_stream(tmp_path, target):
    """ONNX external data (into a template), Keras 3 .weights.h5 (transposed to in x out) and plain arrays
    from an ONNX model of three 96 MB weights: less than 1.4x the largest tensor above the same
    conversion of a tiny model, so no output holds the model, nor a second copy of a tensor."""
    outputs = {"onnx": ("out.onnx", ["--to", "onnx"]), "keras": ("out.weights.h5", ["--to", "keras"]),
               "raw": ("raw", ["--to", "raw"])}
    name, extra = outputs[target]
    peaks = {}
    for size, widths in (("tiny", [8, 6, 8, 6]), ("large", [4000, 6000, 4000, 6000])):
        source = str(tmp_path / f"{size}.onnx")
        onnx_gemm_chain(source, widths)
        options = extra + (["--template", source] if target == "onnx" else [])
        peaks[size] = peak_rss_of([WEIGHTPORT, "convert", source, "-o", str(tmp_path / f"{size}-{name}"),
                                   "--quiet", *options])
    largest = 4000 * 6000 * 4
    assert peaks["large"] - peaks["tiny"] < 1.4 * largest, (
        f"peak {peaks['large'] / MIB:.0f} MiB, tiny model {peaks['tiny'] / MIB:.0f} MiB, "
        f"largest tensor {largest / MIB:.0f} MiB")
