"""``convert -o -``: a one-file output written to stdout.

The conversion is written, as to any path, into a private temporary folder (named with the target's
default extension, so the writer and its checks are the usual ones); when it made exactly one file,
that file's bytes go to stdout.  A folder target (raw, java) is refused before anything is read; a
target that writes a second file beside the first (npz's JSON sidecar, theano's spec, ONNX external
data) is refused after writing, and nothing reaches stdout.  Messages meant for a person (warnings,
the validation report, "wrote ...") go to stderr, so stdout holds only the file.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

from weightport.core.errors import UsageError
from weightport.formats import writer_for

STDOUT = "-"
CHUNK = 1 << 20


def staged_name(to: str | None) -> str:
    """The file name a conversion to stdout is written under: ``stdout`` + the target's default extension."""
    if to is None:
        raise UsageError("{opt:dst=-} (stdout) needs {opt:to}: the output has no extension to tell the target by",
                         fix="Add {opt:to=torch} (or keras, onnx)")
    chosen = writer_for("stdout", to)
    if "" in chosen.extensions:
        raise UsageError(f"{{opt:to={to}}} writes a folder, which stdout cannot hold",
                         fix="Give {opt:dst} a folder name")
    return "stdout" + chosen.extensions[0]


@contextmanager
def output_path(output: str, to: str | None) -> Iterator[tuple[str, Any, bool]]:
    """``(path to write, stream for messages, whether the caller says "wrote")``: ``output``, stdout and
    True; or for ``-`` a temporary path whose one file is copied to stdout when the block succeeds, with
    messages on stderr and the "wrote stdout" line said here, once the copy is done."""
    if output != STDOUT:
        yield output, sys.stdout, True
        return
    import tempfile  # here: start-up of other commands does not pay for it
    folder = tempfile.mkdtemp(prefix="weightport-stdout-")
    try:
        path = os.path.join(folder, staged_name(to))
        yield path, sys.stderr, False
        written = sorted(os.listdir(folder))
        if written != [os.path.basename(path)]:
            raise UsageError(f"{{opt:to={to}}} writes {len(written)} files ({', '.join(written)}), and stdout holds one",
                             fix="Give {opt:dst} a file name")
        sys.stdout.flush()
        with open(path, "rb") as handle:
            copy(handle, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        print(f"wrote stdout ({os.path.getsize(path)} bytes)", file=sys.stderr)
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def copy(source: BinaryIO, sink: BinaryIO) -> None:
    """Copy in 1 MiB chunks (an output may be larger than memory)."""
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return
        sink.write(chunk)
