"""The one resource budget every reader checks before it allocates or loops (docs/security.md).

A hostile file is small and declares something huge: a dataset of 3 GB with a 10 KB file, a pickle
memo index of 2**31, an ONNX ``Expand`` to 8 GB, a graph whose layers form a cycle.  Readers check
each *declared* size against the file that declares it before anything is allocated:

* a stored (uncompressed) array may not be larger than its file, plus a small allowance;
* a compressed one may not expand by more than :data:`MAX_COMPRESSION_RATIO`;
* whatever a reader computes from constants (ONNX constant folding) stays under
  :data:`MAX_COMPUTED_BYTES`;
* nothing may exceed :data:`MAX_ARRAY_BYTES` even when the file is that large, unless it is
  memory-mapped from the file itself.

Every refusal is a :class:`weightport.core.errors.BadInputError` (one line, exit 2) naming the file.
"""

from __future__ import annotations

import os
import stat

from weightport.core.errors import BadInputError, UsageError

MAX_COMPRESSION_RATIO = 1000        # zlib's own ceiling is about 1032:1; real weights compress 1.1-3x
MAX_COMPUTED_BYTES = 64 << 20       # constants a reader computes itself (shape arithmetic, folded subgraphs)
MAX_ARRAY_BYTES = 1 << 40           # no single declared array beyond 1 TiB, whatever the file says
SMALL_ALLOWANCE = 1 << 16           # headers, padding: a 10-byte array in a 1-byte file is not an attack
MAX_NESTING = 200                   # JSON / pickle / graph nesting depth a reader follows
MAX_ITEMS = 10_000_000              # layers, keys, nodes, opcodes a reader iterates


def file_size(path: str) -> int:
    """The size of a regular file (see :func:`require_regular_file`)."""
    return os.stat(path).st_size


def require_regular_file(path: str) -> None:
    """Refuse a FIFO, device, socket or folder as an input: reading one can block or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise UsageError(f"cannot read the file ({error.strerror})", path=path, fix="Check the path") from None
    if stat.S_ISDIR(mode):
        raise UsageError("is a folder, not a model file", path=path, fix="Give the model file itself")
    if not stat.S_ISREG(mode):
        raise UsageError("is not a regular file (a FIFO, device or socket)", path=path,
                         fix="Copy the model into a regular file first")


def check_stored_bytes(nbytes: int, available: int, path: str, what: str) -> None:
    """An array stored uncompressed must fit in the ``available`` bytes that hold it."""
    if nbytes < 0 or nbytes > MAX_ARRAY_BYTES or nbytes > available + SMALL_ALLOWANCE:
        raise BadInputError(f"{what} declares {nbytes} bytes but its file holds only {available}", path=path,
                            fix="The file is damaged or crafted; re-export it")


def check_compressed_bytes(nbytes: int, compressed: int, path: str, what: str) -> None:
    """A compressed array may expand at most :data:`MAX_COMPRESSION_RATIO` times its compressed size."""
    if nbytes < 0 or nbytes > MAX_ARRAY_BYTES or nbytes > max(compressed, 1) * MAX_COMPRESSION_RATIO + SMALL_ALLOWANCE:
        raise BadInputError(f"{what} declares {nbytes} bytes from {compressed} compressed bytes (more than "
                            f"{MAX_COMPRESSION_RATIO}:1)", path=path, fix="The file is damaged or crafted; re-export it")


def check_computed_bytes(nbytes: int, path: str, what: str) -> None:
    """Data a reader computes itself (never weights) stays under :data:`MAX_COMPUTED_BYTES`."""
    if nbytes < 0 or nbytes > MAX_COMPUTED_BYTES:
        raise BadInputError(f"{what} would compute {nbytes} bytes (more than {MAX_COMPUTED_BYTES})", path=path,
                            fix="The file is damaged or crafted; re-export it")


def check_archive_members(members, archive_bytes: int, path: str) -> None:
    """Each member of a zip archive (``zipfile.ZipInfo``: ``filename``, ``compress_type``, ``compress_size``,
    ``file_size``) within its budget, and all of them together at most :data:`MAX_COMPRESSION_RATIO` times the
    archive: members may share their bytes, so each passing alone says nothing of the total."""
    total = 0
    for info in members:
        what = f"archive member {info.filename}"
        check_stored_bytes(info.compress_size, archive_bytes, path, what)
        if info.compress_type == 0:  # stored
            check_stored_bytes(info.file_size, info.compress_size, path, what)
        else:
            check_compressed_bytes(info.file_size, info.compress_size, path, what)
        total += info.file_size
    check_compressed_bytes(total, archive_bytes, path, "the archive (all members together)")


def declared_elements(shape, path: str, what: str) -> int:
    """The element count of a declared shape, a negative dimension refused; counting stops past
    :data:`MAX_ARRAY_BYTES` (whatever follows), so a shape of many huge dimensions costs no big-number arithmetic."""
    if any(size < 0 for size in shape):
        raise BadInputError(f"{what} has a negative dimension ({min(shape)})", path=path,
                            fix="The file is damaged or crafted; re-export it")
    if 0 in shape:
        return 0
    count = 1
    for size in shape:
        count *= size
        if count > MAX_ARRAY_BYTES:
            return MAX_ARRAY_BYTES + 1
    return count


def check_nesting(value, path: str, what: str) -> None:
    """Parsed data nested deeper than :data:`MAX_NESTING` is refused: code walking it recurses.  ``value`` is a
    tree of dicts, lists and tuples (as ``json.loads`` builds), walked once, level by level, without recursion."""
    containers = (dict, list, tuple)
    level = [value] if isinstance(value, containers) else []
    for _ in range(MAX_NESTING):
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, containers)]
    if level:
        raise BadInputError(f"{what} is nested more than {MAX_NESTING} levels deep", path=path,
                            fix="The file is damaged or crafted; re-export it")
