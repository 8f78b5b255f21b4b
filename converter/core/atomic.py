"""Atomic output: write to a temporary file in the destination's folder, fsync, rename.

A failure (or a kill) leaves either the previous file or nothing; never a
partial file.  An existing output is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
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
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=".weightport-", suffix=".tmp", dir=folder)
        os.close(fd)
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~current_umask() if mode is None else mode)
        os.replace(temporary, path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``) where the system says it.

    ``os.umask`` can only be read by setting it; between the two calls every file another thread
    creates would get the temporary mask, so that fallback is taken under a lock and only where
    Linux's ``Umask:`` line is missing.
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the strictest mask while it is being read
        os.umask(umask)
    return umask
