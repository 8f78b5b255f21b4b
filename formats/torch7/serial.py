"""A reader of Torch7's binary serialization (``torch.save``, torch/File.lua) that builds no Lua objects
and runs nothing.

An object is an int32 type tag then its value: nil (0), number (1, a double), string (2, int32 length and
bytes), table (3: an int32 reference index, then, the first time, an int32 pair count and key/value objects),
torch object (4: reference index, then a ``"V <n>"`` version string and the class name, then the class's
data: a Tensor's dimensions, sizes, strides, storage offset and storage; a Storage's size and raw values; any
other class (an nn module) is the table that follows), boolean (5, int32).  Functions (6, 7, 8) are refused:
they are Lua bytecode.  Numbers are written in the machine's byte order and ``long`` is 8 or 4 bytes: the
reader tries each layout and keeps the one that reads the whole file.

Every count and length is checked against the bytes that remain before anything is allocated, storages are
kept as (offset, count) in the memory-mapped file, a tensor's view must lie inside its storage, nesting is
bounded by :data:`~weightport.core.budget.MAX_NESTING`, and shared references are resolved by index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightport.core.budget import MAX_ITEMS, MAX_NESTING
from weightport.core.errors import BadInputError, UnsafeInputError

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN, FUNCTION, RECUR_FUNCTION, LEGACY_RECUR_FUNCTION = range(9)
STORAGE_TYPES = {  # class -> numpy dtype character (the byte order is the file's)
    "torch.FloatStorage": "f4", "torch.DoubleStorage": "f8", "torch.HalfStorage": "f2", "torch.CudaStorage": "f4",
    "torch.CudaDoubleStorage": "f8", "torch.CudaHalfStorage": "f2", "torch.ByteStorage": "u1",
    "torch.CharStorage": "i1", "torch.ShortStorage": "i2", "torch.IntStorage": "i4", "torch.LongStorage": "i8",
    "torch.CudaLongStorage": "i8", "torch.CudaIntStorage": "i4",
}
TENSOR_TYPES = {name.replace("Storage", "Tensor"): name for name in STORAGE_TYPES}


@dataclass
class Storage:
    """``count`` values of ``dtype`` at ``offset`` of the file."""

    dtype: np.dtype
    offset: int
    count: int


@dataclass
class TensorRef:
    """A tensor: sizes and strides (in elements) over a storage from ``offset`` (0-based)."""

    class_name: str
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    storage: Storage | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.sizes


@dataclass
class TorchObject:
    """An object of a Torch class other than a tensor or storage (an nn module): its class and fields."""

    class_name: str
    version: int
    fields: dict[Any, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


@dataclass(frozen=True)
class Layout:
    """The byte order and ``long`` size of a file."""

    order: str  # "<" or ">"
    long_size: int


class Reader:
    """Decodes one buffer under one :class:`Layout`."""

    def __init__(self, buffer: Any, layout: Layout, path: str) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        self.layout = layout
        self.path = path
        self.position = 0
        self.objects: dict[int, Any] = {}
        self.items = 0

    def fail(self, problem: str) -> BadInputError:
        return BadInputError(f"not a readable Torch7 file: {problem}", path=self.path,
                             fix="Check the file is a complete torch.save() .t7 file (binary mode)")

    def take(self, count: int) -> bytes:
        if count < 0 or count > self.size - self.position:
            raise self.fail(f"{count} bytes wanted at byte {self.position}, {self.size - self.position} left")
        data = bytes(self.buffer[self.position:self.position + count])
        self.position += count
        return data

    def int(self) -> int:
        return struct.unpack(self.layout.order + "i", self.take(4))[0]

    def long(self) -> int:
        return struct.unpack(self.layout.order + ("q" if self.layout.long_size == 8 else "i"),
                             self.take(self.layout.long_size))[0]

    def double(self) -> float:
        return struct.unpack(self.layout.order + "d", self.take(8))[0]

    def string(self) -> str:
        return self.take(self.int()).decode("utf-8", "replace")

    def count(self, what: str, minimum_bytes: int) -> int:
        """A count read from the file, no larger than what the remaining bytes could hold."""
        value = self.long() if what.endswith("(long)") else self.int()
        if value < 0 or value * minimum_bytes > self.size - self.position:
            raise self.fail(f"{what} of {value} at byte {self.position} is more than the file holds")
        return value

    def object(self, depth: int = 0) -> Any:
        if depth > MAX_NESTING:
            raise self.fail(f"objects nested more than {MAX_NESTING} levels deep")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise self.fail(f"more than {MAX_ITEMS} objects")
        tag = self.int()
        if tag == NIL:
            return None
        if tag == NUMBER:
            return self.double()
        if tag == STRING:
            return self.string()
        if tag == BOOLEAN:
            return self.int() == 1
        if tag == TABLE:
            return self.table(depth)
        if tag == TORCH:
            return self.torch(depth)
        if tag in (FUNCTION, RECUR_FUNCTION, LEGACY_RECUR_FUNCTION):
            raise UnsafeInputError("the file holds a serialized Lua function (bytecode); weightport never runs code "
                                   "from a file", path=self.path, fix="Save the model without functions "
                                                                      "(clearState(), no closures in modules)")
        raise self.fail(f"unknown type tag {tag} at byte {self.position - 4}")

    def table(self, depth: int) -> dict[Any, Any]:
        index = self.int()
        if index in self.objects:
            return self.objects[index]
        result: dict[Any, Any] = {}
        self.objects[index] = result
        for _ in range(self.count("table size", 8)):
            key = self.object(depth + 1)
            value = self.object(depth + 1)
            if isinstance(key, (dict, TorchObject, TensorRef, Storage)):
                key = id(key)  # a table or object used as a key: never a field weightport reads
            result[key] = value
        return result

    def torch(self, depth: int) -> Any:
        index = self.int()
        if index in self.objects:
            return self.objects[index]
        version_or_class = self.string()
        if version_or_class.startswith("V "):
            version = int(version_or_class[2:]) if version_or_class[2:].isdigit() else 0
            class_name = self.string()
        else:
            version, class_name = 0, version_or_class
        if class_name in STORAGE_TYPES:
            value: Any = self.storage(class_name)
        elif class_name in TENSOR_TYPES:
            value = self.tensor(class_name, depth)
        else:
            value = TorchObject(class_name, version)
            self.objects[index] = value
            fields = self.object(depth + 1)
            if isinstance(fields, dict):
                value.fields = fields
            return value
        self.objects[index] = value
        return value

    def storage(self, class_name: str) -> Storage:
        dtype = np.dtype(self.layout.order + STORAGE_TYPES[class_name])
        count = self.count("storage size (long)", dtype.itemsize)
        offset = self.position
        self.position += count * dtype.itemsize
        return Storage(dtype, offset, count)

    def tensor(self, class_name: str, depth: int) -> TensorRef:
        rank = self.count("tensor dimensions", 16)
        sizes = tuple(self.long() for _ in range(rank))
        strides = tuple(self.long() for _ in range(rank))
        offset = self.long() - 1
        storage = self.object(depth + 1)
        if storage is not None and not isinstance(storage, Storage):
            raise self.fail(f"a {class_name} whose storage is a {type(storage).__name__}")
        ref = TensorRef(class_name, sizes, strides, offset, storage)
        check_view(ref, self)
        return ref


def check_view(ref: TensorRef, reader: Reader) -> None:
    """A tensor's elements all lie inside its storage: sizes and strides not negative, offset in range."""
    if any(size < 0 for size in ref.sizes) or any(stride < 0 for stride in ref.strides):
        raise reader.fail(f"a tensor with negative sizes or strides {list(ref.sizes)} / {list(ref.strides)}")
    if not ref.sizes or 0 in ref.sizes:
        return
    if ref.storage is None:
        raise reader.fail(f"a tensor of shape {list(ref.sizes)} without a storage")
    last = ref.offset + sum((size - 1) * stride for size, stride in zip(ref.sizes, ref.strides))
    if ref.offset < 0 or last >= ref.storage.count:
        raise reader.fail(f"a tensor of shape {list(ref.sizes)} reaches element {last} of a storage of "
                          f"{ref.storage.count}")


def read_array(buffer: Any, ref: TensorRef) -> np.ndarray:
    """The tensor's values (a new C-contiguous array in native byte order)."""
    if not ref.sizes or 0 in ref.sizes or ref.storage is None:
        return np.zeros(ref.sizes, np.float32)
    storage = np.frombuffer(buffer, dtype=ref.storage.dtype, count=ref.storage.count, offset=ref.storage.offset)
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[ref.offset:], shape=ref.sizes,
                                           strides=tuple(stride * item for stride in ref.strides), writeable=False)
    return np.ascontiguousarray(view).astype(storage.dtype.newbyteorder("="), copy=False)


LAYOUTS = (Layout("<", 8), Layout("<", 4), Layout(">", 8), Layout(">", 4))


def load(buffer: Any, path: str) -> tuple[Any, Layout]:
    """The root object of a Torch7 file and the layout that read all of it."""
    first: BadInputError | None = None
    for layout in LAYOUTS:
        reader = Reader(buffer, layout, path)
        try:
            root = reader.object()
        except UnsafeInputError:
            raise
        except BadInputError as error:
            first = first or error
            continue
        if reader.position == reader.size:
            return root, layout
        first = first or reader.fail(f"{reader.size - reader.position} bytes left after the object")
    raise first or BadInputError("not a readable Torch7 file", path=path)
