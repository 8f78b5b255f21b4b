"""File formats: one module each, registered in :data:`FORMATS`.

Every module exposes the same small interface::

    NAME: str                 # registry name
    DESCRIPTION: str          # one line for `weightport formats` and errors
    EXTENSIONS: tuple[str]    # file extensions it owns, lower case
    sniff(path) -> bool       # cheap check that a file is of this format
    read(path, ReadOptions) -> weightport.core.model.Model          (readers)
    write(Model, path, WriteOptions) -> list[str] warnings    (writers)

Modules are imported only when used, so reading an HDF5 file never imports
torch or tensorflow.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

from weightport.core.errors import UsageError


@dataclass(frozen=True)
class FormatEntry:
    """A registered format: its module, extensions, the --to family it serves, and what it can do."""

    name: str
    module: str
    extensions: tuple[str, ...]
    target: str | None
    reads: bool
    writes: bool

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


FORMATS: tuple[FormatEntry, ...] = (
    FormatEntry("keras_h5", "weightport.formats.keras.h5", (".h5", ".hdf5"), "keras", reads=True, writes=True),
    FormatEntry("keras3", "weightport.formats.keras.keras3", (".keras", ".weights.h5"), "keras", reads=True, writes=True),
    FormatEntry("onnx", "weightport.formats.onnx.onnx_file", (".onnx",), "onnx", reads=True, writes=True),
    FormatEntry("safetensors", "weightport.formats.torch.safetensors", (".safetensors",), "torch", reads=True, writes=True),
    FormatEntry("npz", "weightport.formats.numpy.npz", (".npz",), "npz", reads=False, writes=True),
    FormatEntry("theano_pickle", "weightport.formats.theano.reader", (".pkl", ".pickle", ".p", ".npz", ".zip"), "theano",
                reads=True, writes=False),
    FormatEntry("theano", "weightport.formats.theano.writer", (".pkl", ".pickle"), "theano", reads=False, writes=True),
    FormatEntry("torch_pt", "weightport.formats.torch.pt", (".pt", ".pth"), "torch", reads=True, writes=True),
    FormatEntry("raw", "weightport.formats.plain.raw", ("",), "raw", reads=False, writes=True),
    FormatEntry("java", "weightport.formats.plain.java", ("",), "java", reads=False, writes=True),
)

TARGETS: dict[str, str] = {"torch": "safetensors", "keras": "keras_h5", "npz": "npz", "theano": "theano", "raw": "raw",
                           "java": "java"}  # --to family -> default format


def entry(name: str) -> FormatEntry:
    for item in FORMATS:
        if item.name == name:
            return item
    raise KeyError(name)


def extension_of(path: str) -> str:
    """Lower-case extension, keeping Keras 3's double extension ``.weights.h5``."""
    if path.lower().endswith(".weights.h5"):
        return ".weights.h5"
    return os.path.splitext(path)[1].lower()


def reader_for(path: str) -> FormatEntry:
    """The format of an existing file: by content first (sniff), then by extension."""
    readers = [item for item in FORMATS if item.reads]
    by_extension = [item for item in readers if extension_of(path) in item.extensions]
    for item in by_extension + [item for item in readers if item not in by_extension]:
        if item.load().sniff(path):
            return item
    if by_extension:  # the name claims a format: let its reader say precisely what is wrong
        return by_extension[0]
    known = ", ".join(sorted({ext for item in readers for ext in item.extensions}))
    raise UsageError("format not recognized (no reader accepts its content)", path=path,
                     fix=f"weightport reads {known}; check the file is complete")


def writer_for(path: str, to: str | None) -> FormatEntry:
    """The writer for an output path and an optional ``--to`` family."""
    ext = extension_of(path)
    writers = [item for item in FORMATS if item.writes]
    if to is not None:
        family = [item for item in writers if item.target == to or item.name == to]
        if not family:
            choices = ", ".join(sorted({item.target for item in writers if item.target}))
            raise UsageError(f"unknown or unsupported target {to!r}", fix=f"Use --to with one of: {choices}")
        for item in family:
            if ext in item.extensions or "" in item.extensions:  # "": writes a folder, any name
                return item
        default = TARGETS.get(to)
        if default is not None and not ext:
            return entry(default)
        names = ", ".join(e for item in family for e in item.extensions)
        raise UsageError(f"output {path!r} does not have an extension of target {to!r}",
                         fix=f"Name the output with one of: {names}")
    for item in writers:
        if ext and ext in item.extensions:  # a folder writer ("") is chosen only with --to
            return item
    raise UsageError(f"cannot tell the target format from the output name {path!r}",
                     fix="Give --to torch (or name the output .safetensors / .pt)")
