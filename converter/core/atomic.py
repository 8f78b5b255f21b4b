"""Atomic output: write to a temporary file in the destination's folder, fsync, rename.

A failure (or a kill) leaves either the previous file or nothing; never a
partial file.  An existing output is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator

from weightport.core.errors import OutputExistsError, UsageError


def check_can_write(path: str, force: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and ``force`` is false, and
    :class:`UsageError` when its folder does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("the output's folder does not exist", path=folder, fix="Create it first")
    if os.path.lexists(path) and not force:
        raise OutputExistsError("output already exists", path=path, fix="Pass --force to overwrite it")


@contextlib.contextmanager
def atomic_path(path: str, force: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    check_can_write(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
    fd, temporary = tempfile.mkstemp(prefix=".weightport-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
