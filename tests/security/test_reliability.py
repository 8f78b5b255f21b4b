"""Hostile, broken and interrupted: weightport runs nothing from a file, reads nothing outside it,
prints one line (exit 2) and leaves no output or temporary file when it refuses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import ROOT, fixture_path

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")


def refused(run_cli, tmp_path, source, *needles):
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir(exist_ok=True)
    code, stdout, err = run_cli("convert", source, "-o", out)
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err and str(os.path.basename(source)) in err
    for needle in needles:
        assert needle in err, err
    assert list(out.parent.iterdir()) == []
    return err


def copy_fixture(tmp_path, name="model.h5"):
    target = tmp_path / name
    shutil.copy(H5, target)
    return target


def test_hdf5_external_link_is_refused(run_cli, tmp_path):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.arange(4.0)
    model = copy_fixture(tmp_path)
    with h5py.File(model, "a") as f:
        f["model_weights/conv_a/link"] = h5py.ExternalLink(str(secret), "/data")
    refused(run_cli, tmp_path, model, "external link")


def test_hdf5_external_storage_is_refused(run_cli, tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(24, dtype="<f4").tobytes())
    model = copy_fixture(tmp_path)
    with h5py.File(model, "a") as f:
        f.create_dataset("model_weights/conv_a/outside", shape=(24,), dtype="<f4", external=[(str(raw), 0, 96)])
    refused(run_cli, tmp_path, model, "external files")


def test_hdf5_virtual_dataset_is_refused(run_cli, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(6.0)
    model = copy_fixture(tmp_path)
    layout = h5py.VirtualLayout(shape=(6,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(6,))
    with h5py.File(model, "a") as f:
        f.create_virtual_dataset("model_weights/conv_a/virtual", layout)
    refused(run_cli, tmp_path, model, "virtual dataset")


@pytest.mark.parametrize("suffix", [".h5", ".safetensors", ".keras", ".weights.h5"])
@pytest.mark.parametrize("content", ["empty", "random", "truncated"])
def test_broken_files_are_refused(run_cli, tmp_path, suffix, content):
    source = {".h5": H5, ".keras": fixture_path("keras3", "cnn_flatten_dense.keras"),
              ".weights.h5": fixture_path("keras3", "cnn_flatten_dense.weights.h5")}.get(suffix)
    if suffix == ".safetensors":
        source = str(tmp_path / "good.safetensors")
        from weightport.cli import main
        assert main(["convert", H5, "-o", source, "--quiet"]) == 0
    data = open(source, "rb").read()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes({"empty": b"", "random": np.random.RandomState(1).bytes(3000),
                     "truncated": data[: len(data) // 2]}[content])
    if suffix == ".safetensors":
        os.remove(source)
    refused(run_cli, tmp_path, bad)


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("header,data,needle", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "buffer"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "declares"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "contiguous"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "contiguous"),
    ({"a": {"dtype": "XX", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "malformed"),
    ({"a": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4]}}, b"\0" * 4, "declares"),
    ({"__metadata__": {"k": 1}}, b"", "metadata"),
])
def test_hostile_safetensors_headers_are_refused(run_cli, tmp_path, header, data, needle):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(safetensors_bytes(header, data))
    refused(run_cli, tmp_path, bad, needle)


def test_huge_declared_header_is_refused_before_reading(run_cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 2 ** 40) + b"{}")
    refused(run_cli, tmp_path, bad, "header length")


def test_lambda_layer_code_never_runs(run_cli, tmp_path):
    """A real Keras 3 file with a Lambda whose code would create a canary: reading it runs nothing."""
    canary = tmp_path / "CANARY"
    script = (
        "import keras, numpy as np\n"
        "inputs = keras.Input((4,))\n"
        f"x = keras.layers.Lambda(lambda t: (open({str(canary)!r}, 'w'), t)[1] * 2)(inputs)\n"
        "x = keras.layers.Dense(3)(x)\n"
        f"keras.Model(inputs, x).save({str(tmp_path / 'lambda.h5')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env=dict(os.environ,
                   TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    if canary.exists():
        canary.unlink()  # building the model traced the lambda once; reading must not
    code, out, err = run_cli("inspect", tmp_path / "lambda.h5")
    assert code == 0, err
    code, out, err = run_cli("convert", tmp_path / "lambda.h5", "-o", tmp_path / "lambda.safetensors")
    assert code == 0, err
    assert not canary.exists()


def test_nan_inf_denormal_are_kept_bit_exactly_and_reported(run_cli, tmp_path):
    model = copy_fixture(tmp_path)
    with h5py.File(model, "a") as f:
        kernel = f["model_weights/conv_a/conv_a/kernel"]
        values = kernel[()]
        values[0, 0, 0, 0] = np.float32("nan")
        values[1, 0, 2, 3] = np.inf
        values[2, 1, 1, 2] = -np.inf
        values[0, 1, 0, 1] = np.float32(1e-42)  # denormal
        kernel[...] = values
    code, out, err = run_cli("inspect", model)
    assert code == 0 and "1 NaN, 2 Inf, 1 denormal" in out
    target = tmp_path / "out.safetensors"
    assert run_cli("convert", model, "-o", target)[0] == 0
    written = load_file(str(target))["conv_a.weight"]
    expected = np.transpose(values, (3, 2, 0, 1))
    assert np.array_equal(written.view(np.uint32), np.ascontiguousarray(expected).view(np.uint32))
    refused_out = tmp_path / "refused.safetensors"
    code, _, err = run_cli("convert", model, "-o", refused_out, "--fail-on-nonfinite")
    assert code == 2 and "NaN or Inf" in err and not refused_out.exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_a_traceback(tmp_path, where):
    """--debug before the command or after it (where the internal-error line's "rerun with --debug" puts it)."""
    command = ["inspect", str(tmp_path / "no.h5")]
    command = ["--debug", *command] if where == "before" else [*command, "--debug"]
    result = subprocess.run([sys.executable, "-m", "weightport", *command],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_kill_mid_write_leaves_previous_file_or_nothing(tmp_path):
    """SIGKILL a conversion of a ~400 MB model while it writes: the output is the old file, never a torn one."""
    big = tmp_path / "big.h5"
    with h5py.File(big, "w") as f:
        f.attrs["keras_version"] = "3.0.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["layer_names"] = np.array([b"dense"])
        group = f.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel"])
        group.create_dataset("dense/kernel", data=np.ones((10000, 10000), np.float32))
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")
    process = subprocess.Popen([sys.executable, "-m", "weightport", "convert", str(big), "-o", str(out),
                                "--force"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".weightport-") for p in tmp_path.iterdir()):
        time.sleep(0.005)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert out.read_bytes() == b"previous"
