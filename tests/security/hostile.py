"""The harness every hostile-file test uses: run the real CLI on a crafted file in a child process and
assert the promise of docs/security.md: exit 2, one line naming the file (never ``internal error``),
no traceback, nothing written, the source untouched, peak memory and wall time under fixed bounds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
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


def run_weightport(*args: str, timeout: float = TIME_BOUND * 2) -> Outcome:
    """``python -m weightport ARGS`` in a child process, with the child's own peak RSS (``os.wait4``)."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "weightport", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    def drain(stream, sink: list[str]) -> None:
        sink.append(stream.read())
    readers = [threading.Thread(target=drain, args=(process.stdout, out_chunks)),
               threading.Thread(target=drain, args=(process.stderr, err_chunks))]
    for reader in readers:
        reader.start()
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            os.wait4(process.pid, 0)
            raise AssertionError(f"weightport {' '.join(map(str, args))} ran over {timeout} s")
        time.sleep(0.02)
    for reader in readers:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Outcome(process.returncode, "".join(out_chunks), "".join(err_chunks), usage.ru_maxrss * 1024,
                   time.monotonic() - start)


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
