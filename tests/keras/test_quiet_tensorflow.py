"""Commands that import TensorFlow print only weightport's own lines on stderr, without TF_CPP_MIN_LOG_LEVEL,
and TensorFlow's Python output and errors are not hidden (weightport.formats.keras.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, fixture_path

DEMO = fixture_path("keras3", "cnn_flatten_dense")
OWN_PREFIXES = ("warning: ", "weightport: ")


def run_fresh(*args: str, cwd: str) -> subprocess.CompletedProcess:
    """``python -m weightport ARGS`` in a new process whose environment has no TF_CPP_MIN_LOG_LEVEL."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "ABSL_", "GLOG_"))}
    return subprocess.run([sys.executable, "-m", "weightport", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.requires("tensorflow", "keras", "torch")
def test_a_keras_conversion_validated_in_tensorflow_prints_only_weightports_lines(tmp_path):
    result = run_fresh("convert", DEMO + ".h5", "-o", str(tmp_path / "m.safetensors"), "--validate",
                       "--input", DEMO + ".input.npy", "--expected", DEMO + ".output.npy", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "PASS layer conv_a (Conv2D)" in result.stdout  # the layer check ran TensorFlow
    foreign = [line for line in result.stderr.splitlines() if not line.startswith(OWN_PREFIXES)]
    assert foreign == [], result.stderr


@pytest.mark.requires("tensorflow", "keras", "torch")
def test_validate_prints_only_weightports_lines(tmp_path):
    out = tmp_path / "m.safetensors"
    assert run_fresh("convert", DEMO + ".h5", "-o", str(out), cwd=str(tmp_path)).returncode == 0
    result = run_fresh("validate", DEMO + ".h5", str(out), "--input", DEMO + ".input.npy",
                       "--expected", DEMO + ".output.npy", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "result: PASS" in result.stdout
    assert [line for line in result.stderr.splitlines() if not line.startswith(OWN_PREFIXES)] == []


def test_lines_and_errors_from_the_imported_module_are_not_hidden(tmp_path):
    """A module imported through the quiet importer: its C++-style log lines are dropped, any other line
    written to fd 2 is replayed, and the exception it raises reaches the caller unchanged."""
    (tmp_path / "noisy_module.py").write_text(
        "import os\n"
        "os.write(2, b'I0000 00:00:1796300310.599716   17337 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'a real message from the module\\n')\n"
        "raise RuntimeError('broken install')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from weightport.formats.keras import runtime\n"
            "from weightport.formats.keras.runtime import import_quietly\n"
            "runtime.IMPORTS['noisy_module'] = lambda: __import__('noisy_module')\n"
            "try:\n    import_quietly('noisy_module')\n"
            "except RuntimeError as error:\n    print('raised:', error)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout == "raised: broken install\n"
    assert result.stderr == "a real message from the module\n"


def test_absl_warnings_are_dropped_and_errors_kept():
    import logging

    from weightport.formats.keras.runtime import DropBelowError
    records = [logging.LogRecord("absl", level, __file__, 1, "m", None, None)
               for level in (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)]
    assert [record.levelno for record in records if DropBelowError().filter(record)] == [logging.ERROR,
                                                                                          logging.CRITICAL]
