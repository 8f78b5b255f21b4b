"""The legacy (pre-1.6, non-zip) ``torch.save`` format: recognised by its magic number and checked
before torch reads it.

Layout of such a file (``torch/serialization.py``, ``_legacy_save``), five pickles then raw storages::

    pickle(0x1950a86a20f9469cfc6c)          # the magic number, a pickled int
    pickle(1001)                            # protocol version
    pickle({'protocol_version', 'little_endian', 'type_sizes'})
    pickle(state)                           # tensors refer to storages by persistent id
                                            #   ('storage', torch.FloatStorage, key, location, numel, view)
    pickle([key, ...])                      # the order the storages follow
    for each key: int64 numel (little endian), then numel * element size bytes

``torch.load`` allocates every storage the state pickle declares *before* reading its bytes, so a few
crafted bytes could ask for terabytes.  :func:`check_legacy` proves, without running or importing
anything from the file, that every declared storage is listed once, and that the file holds each one's
bytes in full: the storages together can then never exceed the file.  Each pickle is first walked by
the allowlist's opcode prescan (bounded opcodes, memo and nesting), and the state pickle is replayed by
:class:`StorageCollector`, whose globals are inert markers and which never imports a name it sees.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from typing import Any, BinaryIO

from weightport.core.budget import file_size
from weightport.core.errors import BadInputError
from weightport.core.magic import TORCH_LEGACY_HEAD, TORCH_LEGACY_MAGIC, is_torch_legacy
from weightport.formats.theano.allowlist import prescan

MAGIC = TORCH_LEGACY_MAGIC
PROTOCOL_VERSION = 1001
FIX = "The file is truncated or crafted; save the state_dict again with torch.save"
ELEMENT_SIZES = {  # torch.<Name>Storage -> bytes per element
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "UntypedStorage": 1,
}


def sniff_legacy(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return is_torch_legacy(handle.read(TORCH_LEGACY_HEAD))
    except OSError:
        return False


class Bounded(io.RawIOBase):
    """A read-only view of an open file that never returns (or allocates) more than the file holds."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.handle.tell())
        return self.handle.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        return self.handle.readline(max(0, self.size - self.handle.tell()))

    def tell(self) -> int:
        return self.handle.tell()


class Marker:
    """An inert stand-in for any global or object of the state pickle: keeps what it is given."""

    def __init__(self, name: str = "", *args: Any, **kwargs: Any) -> None:
        self.name, self.args = name, args

    def __call__(self, *args: Any, **kwargs: Any) -> "Marker":
        return Marker(self.name, *args)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # an OrderedDict's entries: not needed, not kept
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class StorageCollector(pickle.Unpickler):
    """Replays the state pickle only to collect the storages it declares: ``{key: (type name, numel)}``."""

    def __init__(self, data: bytes, path: str) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str) -> Any:  # never imports: a marker carrying the name
        return Marker(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise BadInputError(f"the state pickle refers to a persistent object {str(pid)[:60]!r} that is not "
                                "a storage", path=self.path, fix="Save model.state_dict(), not the model")
        if len(pid) < 5 or not isinstance(pid[1], Marker) or not isinstance(pid[4], int):
            raise BadInputError("a storage reference of the state pickle is malformed", path=self.path, fix=FIX)
        type_name = pid[1].name.rpartition(".")[2]
        if type_name not in ELEMENT_SIZES or pid[4] < 0:
            raise BadInputError(f"a storage of type {pid[1].name[:60]!r} with {pid[4]} elements", path=self.path,
                                fix="Only plain numeric tensors are read")
        key = str(pid[2])
        if self.storages.setdefault(key, (type_name, pid[4])) != (type_name, pid[4]):
            raise BadInputError(f"storage {key[:40]!r} is declared twice with different sizes", path=self.path,
                                fix=FIX)
        return Marker("storage")


def next_pickle(handle: BinaryIO, size: int, path: str, what: str) -> bytes:
    """The bytes of the pickle starting at the handle's position, prescanned; the handle is left after it."""
    start = handle.tell()
    try:
        for _ in pickletools.genops(Bounded(handle, size)):
            pass
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError) as error:
        raise BadInputError(f"the legacy torch file's {what} pickle is damaged ({type(error).__name__})",
                            path=path, fix=FIX) from None
    end = handle.tell()
    handle.seek(start)
    data = handle.read(end - start)
    prescan(data, path)
    return data


def plain_value(data: bytes, path: str, what: str) -> Any:
    """A pickle of plain values (numbers, strings, lists, dicts): any global is refused."""
    try:
        return StrictPlain(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, IndexError, KeyError) as error:
        raise BadInputError(f"the legacy torch file's {what} is not a plain value ({str(error)[:80]})",
                            path=path, fix=FIX) from None


class StrictPlain(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name}")


def declared_storages(data: bytes, path: str) -> dict[str, tuple[str, int]]:
    collector = StorageCollector(data, path)
    try:
        collector.load()
    except BadInputError:
        raise
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, IndexError, KeyError, AttributeError,
            RecursionError, MemoryError, OverflowError) as error:
        raise BadInputError(f"the legacy torch file's state pickle is damaged ({type(error).__name__})",
                            path=path, fix=FIX) from None
    return collector.storages


def check_legacy(path: str) -> None:
    """Refuse a legacy file whose storages are not all present in full (see the module docstring)."""
    size = file_size(path)
    with open(path, "rb") as handle:
        if plain_value(next_pickle(handle, size, path, "magic number"), path, "magic number") != MAGIC:
            raise BadInputError("not a legacy torch.save file (wrong magic number)", path=path, fix=FIX)
        if plain_value(next_pickle(handle, size, path, "version"), path, "version") != PROTOCOL_VERSION:
            raise BadInputError("unknown legacy torch.save protocol version", path=path, fix=FIX)
        plain_value(next_pickle(handle, size, path, "system"), path, "system information")
        storages = declared_storages(next_pickle(handle, size, path, "state"), path)
        keys = plain_value(next_pickle(handle, size, path, "storage list"), path, "storage list")
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise BadInputError("the storage list does not match the storages the state declares", path=path,
                                fix=FIX)
        for key in keys:
            type_name, numel = storages[str(key)]
            head = handle.read(8)
            if len(head) < 8 or struct.unpack("<q", head)[0] != numel:
                raise BadInputError(f"storage {str(key)[:40]!r} is not stored with its declared {numel} elements",
                                    path=path, fix=FIX)
            end = handle.tell() + numel * ELEMENT_SIZES[type_name]
            if end > size:
                raise BadInputError(f"storage {str(key)[:40]!r} declares {numel} elements beyond the end of the "
                                    "file", path=path, fix=FIX)
            handle.seek(end)
