"""Hostile Torch7 files (docs/security.md): crafted .t7 bytes are refused by the real CLI in a child process
with exit 2 and one line naming the file, nothing written, memory and time bounded.  Serialized Lua functions
are refused as code; counts and lengths are checked against the bytes that remain; a tensor's view must lie
inside its storage; nesting is bounded."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tests.conftest import fixture_path
from tests.security.hostile import assert_refused
from weightport.formats.torch7.encode import Module, Writer, dumps

GOOD = open(fixture_path("torch7", "conv_mm.t7"), "rb").read()


def ints(*values: int) -> bytes:
    return struct.pack("<" + "i" * len(values), *values)


def tensor_header(sizes, strides, offset: int, storage_count: int, data: bytes) -> bytes:
    writer = Writer()
    writer.int(4)
    writer.int(7)
    writer.string("V 1")
    writer.string("torch.FloatTensor")
    writer.int(len(sizes))
    for size in sizes:
        writer.long(size)
    for stride in strides:
        writer.long(stride)
    writer.long(offset + 1)
    writer.int(4)
    writer.int(8)
    writer.string("V 1")
    writer.string("torch.FloatStorage")
    writer.long(storage_count)
    return bytes(writer.out) + data


def linear_with(weight: bytes) -> bytes:
    """An nn.Linear whose fields table holds one entry: the crafted tensor bytes ``weight``."""
    writer = Writer()
    writer.int(4)
    writer.int(1)
    writer.string("V 1")
    writer.string("nn.Linear")
    writer.int(3)  # the fields table: index 2, one pair
    writer.int(2)
    writer.int(1)
    writer.object("weight")
    return bytes(writer.out) + weight


CASES = {
    "empty file": (b"", "empty"),
    "truncated": (GOOD[: len(GOOD) // 2], "more than the file holds"),
    "a serialized Lua function": (ints(6) + ints(1) + ints(4) + b"\x1bLua", "function"),
    "an unknown type tag": (ints(42), "type tag"),
    "a string longer than the file": (ints(2) + ints(1 << 30) + b"abc", "wanted"),
    "a table of 2**30 pairs": (ints(3, 1, 1 << 30), "table size"),
    "a storage of 2**40 floats": (ints(4, 1) + struct.pack("<i", 3) + b"V 1" + struct.pack("<i", 18)
                                  + b"torch.FloatStorage" + struct.pack("<q", 1 << 40), "storage size"),
    "a tensor reaching past its storage": (linear_with(tensor_header((4, 4), (4, 1), 0, 8, b"\x00" * 32)), "reaches"),
    "a tensor with a negative stride": (linear_with(tensor_header((2, 2), (-2, 1), 3, 4, b"\x00" * 16)), "negative"),
    "tables nested 10000 deep": (b"".join(ints(3, k + 1, 1) + ints(1) + struct.pack("<d", 1.0) for k in range(10000))
                                 + ints(0), "nested"),
    "trailing bytes after the object": (GOOD + b"\x00" * 4, None),
    "not an nn module": (dumps({1.0: 2.0}), "not an nn module"),
    "a class weightport does not map, with weights": (
        dumps(Module("nn.Sequential", {"modules": {1.0: Module("nn.Bilinear", {"weight": np.zeros((2, 3), np.float32)})}})),
        "nn.Bilinear"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_t7_is_refused(tmp_path, case):
    data, mention = CASES[case]
    source = tmp_path / "x.t7"
    source.write_bytes(data)
    assert_refused(source, tmp_path, must_mention=mention)


def test_bad_input_shape_spec_is_refused(tmp_path):
    source = tmp_path / "x.t7"
    source.write_bytes(GOOD)
    (tmp_path / "x.spec.json").write_text('{"input_shape": [3, -1, 1e9]}')
    assert_refused(source, tmp_path, must_mention="input_shape")


@pytest.mark.parametrize("suffix", [".t7", ".caffemodel"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_fifo_and_device_are_refused_without_blocking(tmp_path, suffix, kind):
    import os
    source = tmp_path / f"model{suffix}"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        source.symlink_to("/dev/zero")
    assert_refused(source, tmp_path, must_mention="not a regular file")
