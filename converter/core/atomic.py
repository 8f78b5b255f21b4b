"""Atomic output: write to a temporary file in the destination's folder, fsync, rename.

A failure (or a kill) leaves either the previous file or nothing; never a
partial file.  An existing output is replaced only with ``force``, and only when
it is a regular file (or a folder, for the folder targets): a device, FIFO or
socket is never replaced.

Temporary files and staging folders are named ``.weightport-<host>-<pid>-*``.
A SIGKILL can leave one behind; the next write into the same folder removes
those whose process (on this host) no longer exists, and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import threading
from collections.abc import Iterator

from weightport.core.errors import OutputError, OutputExistsError, UsageError
from weightport.core.progress import human_bytes


def check_can_write(path: str, force: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and ``force`` is false, and
    :class:`UsageError` when its folder does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("the output's folder does not exist", path=folder, fix="Create it first")
    if os.path.lexists(path) and not force:
        raise OutputExistsError("output already exists", path=path, fix="Pass {opt:force=True} to overwrite it")
    refuse_special_file(path)


def refuse_special_file(path: str) -> None:
    """Refuse an output that exists and is neither a regular file nor a folder (``/dev/null``, a FIFO)."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UsageError("the output is a device, FIFO or socket, which weightport never replaces", path=path,
                             fix="Name a regular file")


def temporary_prefix() -> str:
    """``.weightport-<host>-<pid>-``: whose temporary a file is, so a later run can tell a stale one."""
    return f".weightport-{host_tag()}-{os.getpid()}-"


@functools.cache
def host_tag() -> str:
    """Eight hex digits of this host's name (its CRC-32: the name itself is not written into file names;
    ``hashlib`` would add its OpenSSL binding, 8 ms, to every conversion's start-up)."""
    import socket  # imported here: start-up of commands that write nothing does not pay for them
    import zlib
    return f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')):08x}"


def __getattr__(name: str) -> str:
    if name == "HOST_TAG":  # the tag as a module constant, computed on first use
        return host_tag()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def staging_folder(near: str) -> str:
    """A new empty folder beside ``near`` for outputs moved into place when complete (caller removes it)."""
    folder = os.path.dirname(os.path.abspath(near))
    remove_stale_temporaries(folder)
    import tempfile  # here and below: `inspect` and `--help` start without tempfile and shutil
    return tempfile.mkdtemp(prefix=temporary_prefix(), suffix=".tmp", dir=folder)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove ``.weightport-<this host>-<pid>-*`` entries of ``folder`` whose process is gone; return them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            parts = entry.name.split("-", 3)
            if len(parts) < 4 or parts[0] != ".weightport" or parts[1] != host_tag() or not parts[2].isdigit():
                continue
            if process_alive(int(parts[2])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    import shutil
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str, force: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    check_can_write(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
    temporary = None
    try:
        remove_stale_temporaries(folder)
        import tempfile
        fd, temporary = tempfile.mkstemp(prefix=temporary_prefix(), suffix=".tmp", dir=folder)
        os.close(fd)
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~current_umask() if mode is None else mode)
        os.replace(temporary, path)
        fsync_folder(folder)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
            raise OutputError(f"cannot write the file ({error.strerror})", path=path,
                              fix="Check free space, quotas and permissions; nothing was written") from None
        raise


WRITE_FAILURES = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextlib.contextmanager
def atomic_paths(paths: list[str], force: bool = False) -> Iterator[list[str]]:
    """Temporary paths beside ``paths`` (one folder); on success each replaces its path, in the given order
    (put an index last), after all are written and fsynced.  A failure before the renames leaves nothing."""
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(atomic_path(path, force)) for path in paths]
        yield temporaries
    # ExitStack closes in reverse order: the first path is renamed last, so callers pass the index first.


def check_free_space(path: str, nbytes: int) -> None:
    """Refuse (exit 2, before anything is written) an output of ``nbytes`` that the destination's file system
    cannot hold; the figure is stated in the message."""
    folder = os.path.dirname(os.path.abspath(path))
    with contextlib.suppress(OSError):
        import shutil
        free = shutil.disk_usage(folder).free
        if nbytes > free:
            raise OutputError(f"the output needs {human_bytes(nbytes)} and its file system has {human_bytes(free)} "
                              "free", path=path, fix="Free some space or write elsewhere; nothing was written")



def fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse a folder fsync)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


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
