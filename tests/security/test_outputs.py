"""Outputs under attack and accident (issue 20, items 5-7): ONNX external data written atomically, SIGTERM
and SIGKILL leave nothing behind (or only what the next run removes), special files are never replaced,
an output never overwrites an input, a failed write is one line, and file contents never reach the
terminal as control characters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, fixture_path
from tests.security.hostile import run_weightport

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".weightport-"))


# -- ONNX external data --------------------------------------------------------------------------------

def small_threshold(monkeypatch) -> None:
    """Models over this many bytes go to external data (2 GB in production: too slow for a test)."""
    from weightport.formats.onnx import writer
    monkeypatch.setattr(writer, "EXTERNAL_THRESHOLD", 1024)
    monkeypatch.setattr(writer, "EXTERNAL_TENSOR_BYTES", 0)


def onnx_output(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_external_data_pair_is_written_whole_and_a_rerun_does_not_append(tmp_path, monkeypatch):
    from weightport import convert
    small_threshold(monkeypatch)
    out = tmp_path / "model.onnx"
    convert(H5, str(out), to="onnx")
    data = tmp_path / "model.onnx.data"
    assert data.is_file() and leftovers(tmp_path) == []
    x = np.load(fixture_path("keras3", "cnn_flatten_dense.input.npy")).astype(np.float32)
    expected = np.load(fixture_path("keras3", "cnn_flatten_dense.output.npy"))
    first = onnx_output(out, np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    size = data.stat().st_size
    convert(H5, str(out), to="onnx", force=True)  # a rerun replaces the pair; it never appends
    data_files = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".data"))
    assert len(data_files) == 1 and (tmp_path / data_files[0]).stat().st_size == size, data_files
    np.testing.assert_array_equal(onnx_output(out, np.ascontiguousarray(np.moveaxis(x, -1, 1))), first)
    assert leftovers(tmp_path) == []


def test_a_failed_force_rewrite_leaves_the_previous_pair_whole(tmp_path, monkeypatch):
    from weightport import convert
    from weightport.formats.onnx import writer
    small_threshold(monkeypatch)
    out = tmp_path / "model.onnx"
    convert(H5, str(out), to="onnx")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise writer.BadInputError("the written ONNX model fails onnx.checker (injected)", path=str(out))
    monkeypatch.setattr(writer, "check_written", fail)
    with pytest.raises(writer.BadInputError):
        convert(H5, str(out), to="onnx", force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_kill_between_the_two_renames_leaves_the_previous_pair_whole(tmp_path):
    """SIGKILL at the worst moment: the new data file is in place, the model not yet."""
    out = tmp_path / "model.onnx"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from weightport.formats.onnx import writer
        writer.EXTERNAL_THRESHOLD, writer.EXTERNAL_TENSOR_BYTES = 1024, 0
        from weightport import convert
        if sys.argv[1] == "first":
            convert({H5!r}, {str(out)!r}, to="onnx")
        else:
            real = os.replace
            def replace(src, dst):
                real(src, dst)
                if dst.endswith(".data"):
                    os.kill(os.getpid(), signal.SIGKILL)
            os.replace = replace
            convert({H5!r}, {str(out)!r}, to="onnx", force=True)
    """)
    subprocess.run([sys.executable, "-c", script, "first"], check=True, timeout=300)
    x = np.ascontiguousarray(np.moveaxis(np.load(fixture_path("keras3", "cnn_flatten_dense.input.npy")), -1, 1))
    previous = onnx_output(out, x.astype(np.float32))
    killed = subprocess.run([sys.executable, "-c", script, "kill"], timeout=300)
    assert killed.returncode == -signal.SIGKILL
    np.testing.assert_array_equal(onnx_output(out, x.astype(np.float32)), previous)  # the previous pair, whole
    assert leftovers(tmp_path)  # the killed run's staging folder ...
    code = run_weightport("convert", H5, "-o", tmp_path / "other.safetensors").code
    assert code == 0 and leftovers(tmp_path) == []  # ... is removed by the next run into the folder


# -- signals, stale temporaries, special files, inputs ---------------------------------------------------

SLOW_WRITE = textwrap.dedent("""
    import sys, time
    from weightport.core import streaming
    real = streaming.write_in_background
    def slow(*args, **kwargs):
        print("writing", flush=True)
        time.sleep(60)
        return real(*args, **kwargs)
    streaming.write_in_background = slow
    from weightport.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    out = tmp_path / "out.safetensors"
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "convert", H5, "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    assert leftovers(tmp_path)  # the temporary exists while the write runs
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.strip() == "weightport: terminated (SIGTERM); no output was written"
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    from weightport.core.atomic import HOST_TAG
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_file = tmp_path / f".weightport-{HOST_TAG}-{dead.pid}-abc.tmp"
    stale_folder = tmp_path / f".weightport-{HOST_TAG}-{dead.pid}-def.tmp"
    live = tmp_path / f".weightport-{HOST_TAG}-{os.getpid()}-ghi.tmp"
    other_host = tmp_path / f".weightport-00000000-{dead.pid}-jkl.tmp"
    user_file = tmp_path / ".weightport-notes.txt"
    stale_file.write_bytes(b"partial")
    stale_folder.mkdir()
    (stale_folder / "weights.bin").write_bytes(b"partial")
    for path in (live, other_host, user_file):
        path.write_bytes(b"keep")
    assert run_weightport("convert", H5, "-o", tmp_path / "out.safetensors").code == 0
    assert not stale_file.exists() and not stale_folder.exists()
    assert live.exists() and other_host.exists() and user_file.exists()


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_special_file_is_never_replaced(tmp_path, kind):
    if kind == "device":
        target = Path("/dev/null")
    else:
        target = tmp_path / "pipe.safetensors"
        os.mkfifo(target)
    outcome = run_weightport("convert", H5, "-o", target, "--to", "torch", "--force")
    assert outcome.code == 2 and "device, FIFO or socket" in outcome.stderr, outcome.stderr
    mode = os.stat(target).st_mode
    assert stat.S_ISCHR(mode) if kind == "device" else stat.S_ISFIFO(mode)


def test_a_fifo_as_input_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.h5"
    os.mkfifo(fifo)
    outcome = run_weightport("inspect", fifo, timeout=60)
    assert outcome.code == 2 and "not a regular file" in outcome.stderr and str(fifo) in outcome.stderr


def test_an_output_never_overwrites_an_input(tmp_path):
    for name in ("theano_cnn.py2.pkl", "theano_cnn.spec.json"):
        shutil.copy(fixture_path("theano", name), tmp_path / name)
    spec = tmp_path / "theano_cnn.spec.json"
    before = spec.read_bytes()
    # the theano target writes <stem>.spec.json beside its output: here, the source's own spec
    outcome = run_weightport("convert", tmp_path / "theano_cnn.py2.pkl", "-o", tmp_path / "theano_cnn.out.pkl",
                             "--to", "theano", "--force")
    assert outcome.code == 2 and "would overwrite an input" in outcome.stderr, outcome.stderr
    assert spec.read_bytes() == before and not (tmp_path / "theano_cnn.out.pkl").exists()
    same = run_weightport("convert", H5, "-o", H5, "--to", "keras", "--force")
    assert same.code == 2 and "would overwrite an input" in same.stderr
    folder = tmp_path / "raw"
    folder.mkdir()
    inside = folder / "model.h5"
    shutil.copy(H5, inside)
    nested = run_weightport("convert", inside, "-o", folder, "--to", "raw", "--force")
    assert nested.code == 2 and inside.exists()


def test_a_failed_pt_write_is_one_line_naming_the_output(tmp_path):
    """A file size limit makes torch.save's write fail mid-file (as a full disk does)."""
    out = tmp_path / "out.pt"
    script = textwrap.dedent("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))  # the .pt is 5 KB
        from weightport.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    result = subprocess.run([sys.executable, "-c", script, "convert", H5, "-o", str(out)], capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "internal error" not in lines[0] and str(out) in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


# -- what a person sees ----------------------------------------------------------------------------------

HOSTILE_NAME = "conv\x1b[2J\x1b[32mverified OK\x1b[0m\nresult: PASS\r\u202e"


def test_control_characters_from_a_file_never_reach_the_terminal(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    source = tmp_path / "evil.safetensors"
    save_file({f"{HOSTILE_NAME}.weight": rng.standard_normal((3, 2)).astype(np.float32)}, str(source))
    converted = tmp_path / "copy.safetensors"
    for args in (("inspect", source), ("explain", source), ("convert", source, "-o", converted),
                 ("validate", source, converted)):
        outcome = run_weightport(*args)
        shown = outcome.stdout + outcome.stderr
        assert "\x1b" not in shown and "\r" not in shown and "\u202e" not in shown, (args, shown)
        assert not any(line.startswith("result: PASS") and "conv" in line for line in shown.splitlines())
        if args[0] in ("inspect", "explain"):
            assert "\\x1b[32mverified OK" in shown, (args, shown)
    listed = json.loads(run_weightport("inspect", source, "--json").stdout)  # JSON keeps the name exactly
    assert listed["layers"][0]["name"] == HOSTILE_NAME
    named = tmp_path / "evil\x1b[31m.h5"
    named.write_bytes(b"not hdf5")
    outcome = run_weightport("inspect", named)
    assert outcome.code == 2 and "\x1b" not in outcome.stderr and "evil\\x1b[31m.h5" in outcome.stderr
