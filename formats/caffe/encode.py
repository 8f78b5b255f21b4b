"""Protobuf wire-format encoding primitives and a Caffe blob writer: what the OpenCV layer oracle (and the
fixture generator) need to hand OpenCV a one-layer ``.caffemodel``.  Field numbers: BVLC caffe.proto
(NetParameter.layer 100; LayerParameter name 1, type 2, blobs 7; BlobProto shape 7, data 5;
BlobShape dim 1; legacy 4-D num/channels/height/width 1-4)."""

from __future__ import annotations

import numpy as np


def varint(value: int) -> bytes:
    """``value`` as a base-128 varint (negative numbers as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, a sub-message, a packed run)."""
    return key(number, 2) + varint(len(payload)) + payload


def blob(array: np.ndarray, legacy: bool = False) -> bytes:
    """A BlobProto of float32 ``array``: BlobShape dims, or the legacy 4-D num/channels/height/width."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    if legacy:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        shape = b"".join(key(number, 0) + varint(size) for number, size in zip((1, 2, 3, 4), dims))
    else:
        shape = length(7, length(1, b"".join(varint(size) for size in array.shape)))
    return shape + length(5, data)


def weights_only(layers: list[tuple[str, str, list[np.ndarray]]]) -> bytes:
    """A NetParameter holding only each layer's name, type and blobs (OpenCV takes the rest from the prototxt)."""
    out = b""
    for name, kind, blobs in layers:
        body = length(1, name.encode()) + length(2, kind.encode())
        body += b"".join(length(7, blob(array)) for array in blobs)
        out += length(100, body)
    return out
