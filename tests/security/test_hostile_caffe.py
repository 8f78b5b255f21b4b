"""Hostile Caffe files (docs/security.md): crafted .caffemodel bytes and .prototxt text are refused by the
real CLI in a child process with exit 2 and one line naming the file, nothing written, memory and time
bounded (tests.security.hostile.assert_refused).  Every length of the protobuf wire format is checked
against the bytes that remain, nesting is bounded, a blob's declared shape must match the values it holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from weightport.formats.caffe.encode import key, length, varint
from tests.conftest import fixture_path
from tests.security.hostile import assert_refused


def net(*layers: bytes) -> bytes:
    return b"".join(length(100, body) for body in layers)


def conv_layer(blobs: bytes = b"") -> bytes:
    return length(1, b"conv1") + length(2, b"Convolution") + blobs


def pair(tmp_path: Path, model: bytes, prototxt: str | None = None) -> Path:
    """``model`` as x.caffemodel beside the conv_axes prototxt (or ``prototxt``)."""
    source = tmp_path / "x.caffemodel"
    source.write_bytes(model)
    if prototxt is None:
        shutil.copy(fixture_path("caffe", "conv_axes.prototxt"), tmp_path / "x.prototxt")
    else:
        (tmp_path / "x.prototxt").write_text(prototxt)
    return source


GOOD = open(fixture_path("caffe", "conv_axes.caffemodel"), "rb").read()

CASES = {
    "empty file": (b"", None, "empty"),
    "truncated in the middle of a blob": (GOOD[: len(GOOD) // 2], None, "runs past"),
    "length past the end": (key(100, 2) + varint(1 << 40) + b"\x0a\x01a", None, "runs past"),
    "varint that never ends": (b"\x0a" + b"\xff" * 20, None, "number"),
    "group wire type": (key(100, 3) + b"\x00", None, "wire type"),
    "field number zero": (b"\x02\x00", None, "field number 0"),
    "blob shape larger than its data": (net(conv_layer(length(7, length(7, length(1, varint(1 << 30) + varint(1 << 30)))
                                                                 + length(5, b"\x00" * 16)))), None, "declares"),
    "blob with a negative dimension": (net(conv_layer(length(7, length(7, length(1, varint(-3)))))), None,
                                       "negative"),
    "packed floats not whole values": (net(conv_layer(length(7, length(5, b"\x00" * 7)))), None, "whole"),
    "weights missing for a prototxt layer": (net(length(1, b"other") + length(2, b"Convolution")), None, "blobs"),
}


def nested(depth: int) -> bytes:
    """A layer holding a field nested ``depth`` deep: Caffe's message tables have no recursive message, so the
    decoder skips it by its length (no recursion, linear time) and the layer has no weights."""
    body = b""
    for _ in range(depth):
        body = length(99, body)
    return net(conv_layer(body))


CASES["a field nested 1000 deep"] = (nested(1000), None, "blobs")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_caffemodel_is_refused(tmp_path, case):
    model, text, mention = CASES[case]
    assert_refused(pair(tmp_path, model, text), tmp_path, must_mention=mention)


PROTOTXT_CASES = {
    "unbalanced braces": ('layer { name: "a" type: "ReLU" ', "unclosed"),
    "stray closing brace": ("}", "unmatched"),
    "messages nested 100000 deep": ("a { " * 100_000 + "} " * 100_000, "nested"),
    "a control character": ("name: \x01", "unexpected character"),
    "NUL bytes": ("name: \"a\"\x00", "NUL"),
    "a layer reading a blob nobody produces": ('input: "data" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
                                               'layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }', "nothing"),
    "no input at all": ('layer { name: "r" type: "ReLU" top: "r" }', "no input"),
}


@pytest.mark.parametrize("case", sorted(PROTOTXT_CASES))
def test_hostile_prototxt_is_refused(tmp_path, case):
    text, mention = PROTOTXT_CASES[case]
    assert_refused(pair(tmp_path, GOOD, text), tmp_path, must_mention=mention)


def test_prototxt_kernel_disagreeing_with_the_caffemodel_is_refused(tmp_path):
    text = open(fixture_path("caffe", "conv_axes.prototxt")).read().replace("kernel_h: 3", "kernel_h: 5")
    assert_refused(pair(tmp_path, GOOD, text), tmp_path, must_mention="kernel")


def test_blob_values_are_never_more_than_the_file(tmp_path):
    """A blob claims (1 << 40) values with a shape to match but holds 4 bytes: refused before any read."""
    huge = length(7, length(1, varint(1 << 20) + varint(1 << 20))) + length(5, np.zeros(1, "<f4").tobytes())
    assert_refused(pair(tmp_path, net(conv_layer(length(7, huge)))), tmp_path, must_mention="declares")
