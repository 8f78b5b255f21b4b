"""A minimal protobuf wire-format decoder driven by a field table (no protobuf dependency).

A message is decoded into a :class:`Message`: field name -> list of values, with the names of the
Caffe ``.proto`` so a binary ``.caffemodel`` and a text ``.prototxt`` give the same structure.  Packed
and unpacked repeated floats are both accepted; packed floats are kept as a :class:`FloatRun` (offset and
count in the buffer), read only when a tensor is loaded.  Every length is checked against the bytes that
remain, nesting is bounded by :data:`~weightport.core.budget.MAX_NESTING`, and unknown fields are skipped
by their wire type.  Nothing is executed: the decoder only reads numbers and bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightport.core.budget import MAX_ITEMS, MAX_NESTING
from weightport.core.errors import BadInputError

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
MAX_VARINT_BYTES = 10


@dataclass(frozen=True)
class Field:
    """One field of a message table: its name and type (``message`` fields name their table)."""

    name: str
    type: str                   # int (unsigned), int64 (signed), bool, enum, float, double, string, bytes, message
    message: str | None = None  # the table of a message field
    enum: dict[int, str] | None = None


@dataclass(frozen=True)
class FloatRun:
    """``count`` values of ``dtype`` (little-endian) at ``offset`` of the buffer: a packed repeated field."""

    offset: int
    count: int
    dtype: str = "<f4"


@dataclass
class Message:
    """A decoded message: field name -> values in file order (a message field's values are Messages)."""

    type: str
    fields: dict[str, list[Any]] = field(default_factory=dict)

    def all(self, name: str) -> list[Any]:
        return self.fields.get(name, [])

    def get(self, name: str, default: Any = None) -> Any:
        values = self.fields.get(name)
        return values[-1] if values else default

    def has(self, name: str) -> bool:
        return bool(self.fields.get(name))

    def add(self, name: str, value: Any) -> None:
        self.fields.setdefault(name, []).append(value)


class WireDecoder:
    """Decodes one buffer (bytes or a memory map) against the message ``tables``."""

    def __init__(self, buffer: Any, tables: dict[str, dict[int, Field]], path: str) -> None:
        self.buffer = memoryview(buffer)
        self.tables = tables
        self.path = path
        self.items = 0

    def fail(self, problem: str) -> BadInputError:
        return BadInputError(f"not a readable Caffe protobuf: {problem}", path=self.path,
                             fix="Check the file is a complete .caffemodel (binary NetParameter)")

    def varint(self, position: int, end: int) -> tuple[int, int]:
        value, shift = 0, 0
        for count in range(MAX_VARINT_BYTES):
            if position >= end:
                raise self.fail(f"a number runs past the end of its message at byte {position}")
            byte = self.buffer[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, position
            shift += 7
        raise self.fail(f"a number longer than {MAX_VARINT_BYTES} bytes at byte {position}")

    def message(self, table: str, start: int, end: int, depth: int = 0) -> Message:
        """The message of type ``table`` held in ``buffer[start:end]``."""
        if depth > MAX_NESTING:
            raise self.fail(f"messages nested more than {MAX_NESTING} levels deep")
        fields = self.tables[table]
        result = Message(table)
        position = start
        while position < end:
            self.items += 1
            if self.items > MAX_ITEMS:
                raise self.fail(f"more than {MAX_ITEMS} fields")
            key, position = self.varint(position, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail(f"field number 0 at byte {position}")
            known = fields.get(number)
            position = self.value(result, known, wire, position, end, depth)
        return result

    def span(self, position: int, end: int) -> tuple[int, int]:
        length, position = self.varint(position, end)
        if length > end - position:
            raise self.fail(f"a field of {length} bytes at byte {position} runs past its message "
                            f"({end - position} bytes left)")
        return position, position + length

    def value(self, result: Message, known: Field | None, wire: int, position: int, end: int, depth: int) -> int:
        """Decode one value of wire type ``wire`` at ``position`` into ``result``; the position after it."""
        if wire == VARINT:
            number, position = self.varint(position, end)
            if known is not None:
                result.add(known.name, self.scalar(known, number))
            return position
        if wire in (FIXED32, FIXED64):
            size = 4 if wire == FIXED32 else 8
            if size > end - position:
                raise self.fail(f"a {size}-byte number runs past its message at byte {position}")
            if known is not None:
                raw = bytes(self.buffer[position:position + size])
                fmt = "<f" if known.type == "float" else "<d" if known.type == "double" else \
                    ("<I" if size == 4 else "<Q")
                result.add(known.name, struct.unpack(fmt, raw)[0])
            return position + size
        if wire == LENGTH:
            begin, stop = self.span(position, end)
            if known is not None:
                self.length_value(result, known, begin, stop, depth)
            return stop
        raise self.fail(f"wire type {wire} (groups are not used by Caffe) at byte {position}")

    def length_value(self, result: Message, known: Field, begin: int, stop: int, depth: int) -> None:
        if known.type == "message":
            result.add(known.name, self.message(known.message or "", begin, stop, depth + 1))
        elif known.type == "string":
            result.add(known.name, bytes(self.buffer[begin:stop]).decode("utf-8", "replace"))
        elif known.type == "bytes":
            result.add(known.name, bytes(self.buffer[begin:stop]))
        elif known.type in ("float", "double"):
            size = 4 if known.type == "float" else 8
            if (stop - begin) % size:
                raise self.fail(f"packed field {known.name!r} of {stop - begin} bytes is not whole "
                                f"{size}-byte values")
            result.add(known.name, FloatRun(begin, (stop - begin) // size, "<f4" if size == 4 else "<f8"))
        else:  # packed varints
            position = begin
            while position < stop:
                number, position = self.varint(position, stop)
                result.add(known.name, self.scalar(known, number))

    @staticmethod
    def scalar(known: Field, number: int) -> Any:
        if known.type == "bool":
            return bool(number)
        if known.type == "int64":  # signed: two's complement written as a varint
            return number - (1 << 64) if number >= 1 << 63 else number
        if known.type == "enum":
            return (known.enum or {}).get(number, number)
        if known.type == "float":  # a float field written as a varint: not valid protobuf
            raise BadInputError(f"field {known.name!r} holds an integer where a float belongs",
                                fix="The file is damaged or crafted")
        return number


def float_values(buffer: Any, values: list[Any]) -> np.ndarray:
    """The float values of a repeated float field: packed runs read from ``buffer`` and loose values, in order."""
    parts = []
    loose: list[float] = []
    for value in values:
        if isinstance(value, FloatRun):
            if loose:
                parts.append(np.asarray(loose, dtype=np.float32))
                loose = []
            parts.append(np.frombuffer(buffer, dtype=value.dtype, count=value.count, offset=value.offset))
        else:
            loose.append(float(value))
    if loose:
        parts.append(np.asarray(loose, dtype=np.float32))
    if not parts:
        return np.zeros((0,), np.float32)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([part.astype(np.float64 if part.dtype == np.float64 else np.float32) for part in parts])


def float_count(values: list[Any]) -> int:
    """How many floats a repeated float field holds, without reading them."""
    return sum(value.count if isinstance(value, FloatRun) else 1 for value in values)
