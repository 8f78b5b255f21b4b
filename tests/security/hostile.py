"""The harness every hostile-file test uses: run the real CLI on a crafted file in a child process and
assert the promise of docs/security.md: exit 2, one line naming the file (never ``internal error``),
no traceback, nothing written, the source untouched, peak memory and wall time under fixed bounds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MEMORY_BOUND = 1 << 30   # peak RSS of the whole weightport process on any hostile file (1 GiB)
TIME_BOUND = 60.0        # seconds, start-up included


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    peak_rss: int      # bytes, the child's ru_maxrss
    seconds: float


# Linux keeps a process's peak RSS across fork and exec, so a child started straight from a pytest
# that has loaded TensorFlow (2 GB) would report 2 GB whatever it did.  A small launcher (a fresh
# interpreter of a few MiB) starts weightport and reports that grandchild's own peak from wait4.
LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss": usage.ru_maxrss}, report)
"""


def run_weightport(*args: str, timeout: float = TIME_BOUND * 2) -> Outcome:
    """``python -m weightport ARGS`` in a child process, with that process's own peak RSS."""
    start = time.monotonic()
    fd, result_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, result_path, sys.executable, "-m", "weightport",
                                    *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(f"weightport {' '.join(map(str, args))} ran over {timeout} s") from None
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    finally:
        os.unlink(result_path)
    return Outcome(result["code"], stdout, stderr, result["maxrss"] * 1024, time.monotonic() - start)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def assert_refused(source: Path, tmp_path: Path, *extra: str, to: str = "torch", output: str = "out.safetensors",
                   command: str = "convert", must_mention: str | None = None) -> Outcome:
    """``weightport convert SOURCE -o OUT --to TO`` refuses the file as the promise says."""
    before = digest(source)
    out = tmp_path / "hostile-out" / output
    out.parent.mkdir(exist_ok=True)
    args = [command, str(source)] + (["-o", str(out), "--to", to] if command == "convert" else []) + list(extra)
    outcome = run_weightport(*args)
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
    assert len(lines) == 1, outcome.stderr[-2000:]
    assert "internal error" not in lines[0] and "Traceback" not in outcome.stderr, lines[0]
    assert str(source) in lines[0] or source.name in lines[0], lines[0]
    if must_mention:
        assert must_mention.lower() in lines[0].lower(), lines[0]
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())  # nothing written, no temp files
    assert digest(source) == before
    assert outcome.peak_rss < MEMORY_BOUND, f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB"
    assert outcome.seconds < TIME_BOUND, f"{outcome.seconds:.1f} s"
    return outcome
