"""Keras 3 native files: ``.keras`` archives (config.json + model.weights.h5) and ``.weights.h5``.

``model.weights.h5`` stores each layer under ``layers/<snake_case class>[_n]``
with its variables as ``vars/0``, ``vars/1``, ... (RNN cells under
``cell/vars``, nested models under their own ``layers/``); the ``vars`` group's
``name`` attribute is the layer's name.  Variable order per class comes from
:func:`weightport.formats.keras.layers.keras3_variable_names`.  The architecture comes
from the archive's ``config.json`` (JSON only; a Lambda's code is never run);
a bare ``.weights.h5`` has none, so layer kinds come from the group names.

Stored (uncompressed) archive members are read in place through a window on
the archive, tensor by tensor; a compressed member is refused rather than
inflated into memory.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from typing import Any

import h5py

from weightport.core.describe import parse_json
from weightport.core.errors import BadInputError, UnsupportedError, WeightportError
from weightport.core.model import Model
from weightport.core.options import ReadOptions
from weightport.formats.keras import hdf5
from weightport.formats.keras.config import KerasLayerDecl, model_layers
from weightport.formats.keras.h5_reader import KerasH5Reader, guess_class
from weightport.formats.keras.layers import CONV_KINDS, WEIGHTED_SIMPLE, WEIGHTLESS, keras3_variable_names

NAME = "keras3"
DESCRIPTION = "Keras 3 native (.keras archive, .weights.h5)"
EXTENSIONS = (".keras", ".weights.h5")
WEIGHTS_MEMBER = "model.weights.h5"
MAX_JSON = 64 * 1024 * 1024


class ArchiveWindow(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``offset`` of a file (a stored zip member)."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        super().__init__()
        self.handle = open(path, "rb")
        self.offset, self.length, self.position = offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, base + position)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        size = max(0, min(len(buffer), self.length - self.position))
        self.handle.seek(self.offset + self.position)
        data = self.handle.read(size)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self.handle.close()
        super().close()


def sniff(path: str) -> bool:
    if path.endswith(".keras") or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return WEIGHTS_MEMBER in archive.namelist() and "config.json" in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
    if not hdf5.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as handle:
            return "layers" in handle and "layer_names" not in handle.attrs
    except hdf5.H5_ERRORS:
        return False


def open_archive(path: str) -> tuple[h5py.File, Any, dict[str, Any]]:
    """(weights file, config, metadata) of a ``.keras`` archive, weights read in place."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = read_json_member(archive, "config.json", path)
            metadata = read_json_member(archive, "metadata.json", path) if "metadata.json" in archive.namelist() else {}
            if not isinstance(metadata, dict) or not isinstance(metadata.get("keras_version", ""), str):
                raise BadInputError("metadata.json is not a JSON object with a text keras_version", path=path,
                                    fix="Save the model again with model.save('model.keras')")
            info = archive.getinfo(WEIGHTS_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise BadInputError(f".keras archive is damaged or lacks {WEIGHTS_MEMBER} ({error})", path=path,
                            fix="Save the model again with model.save('model.keras')") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedError(f"{WEIGHTS_MEMBER} is compressed inside the archive", path=path,
                               fix="Unzip the archive and convert model.weights.h5 with the config beside it")
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raise BadInputError("zip member header is damaged", path=path, fix="Save the model again")
    name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > os.path.getsize(path):
        raise BadInputError(f"{WEIGHTS_MEMBER} extends beyond the end of the archive", path=path,
                            fix="The file is truncated; save the model again")
    window = ArchiveWindow(path, start, info.file_size)
    head = window.read(8)
    window.seek(0)
    if head != hdf5.HDF5_SIGNATURE:
        window.close()
        raise BadInputError(f"{WEIGHTS_MEMBER} is not HDF5", path=path, fix="Save the model again")
    try:
        handle = h5py.File(window, "r")
        hdf5.refuse_outside_references(handle, path)
    except hdf5.H5_ERRORS as error:
        raise BadInputError(f"{WEIGHTS_MEMBER} cannot be opened ({hdf5.first_line(error)})", path=path,
                            fix="Save the model again") from None
    return handle, config, metadata


def read_json_member(archive: zipfile.ZipFile, name: str, path: str) -> Any:
    info = archive.getinfo(name)
    if info.file_size > MAX_JSON:
        raise BadInputError(f"{name} declares {info.file_size} bytes", path=path, fix="This is not a Keras archive")
    try:
        text = archive.read(name).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{name} is not valid JSON ({error})", path=path, fix="Save the model again") from None
    return parse_json(text, path, name)


def read(path: str, options: ReadOptions) -> Model:
    """Read a ``.keras`` archive or a Keras 3 ``.weights.h5`` into the canonical model."""
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise BadInputError("not a .keras archive (no zip structure); it may be truncated", path=path,
                            fix="Save the model again with model.save('model.keras')")
    if zipfile.is_zipfile(path):
        handle, config, metadata = open_archive(path)
        version = metadata.get("keras_version")
    else:
        handle, config, version = hdf5.open_hdf5(path), None, None
    try:
        return Keras3Reader(path, handle, options, config, version).model()
    except WeightportError as error:
        handle.close()
        raise error.with_path(path)
    except hdf5.H5_ERRORS as error:
        handle.close()
        raise BadInputError(f"Keras 3 weights not understood ({type(error).__name__}: {error})", path=path,
                            fix="Check the file was written by Keras 3 model.save or save_weights") from None


class Keras3Reader(KerasH5Reader):
    """The Keras HDF5 reader with Keras 3's ``layers/<key>/vars/<n>`` storage."""

    def __init__(self, path: str, handle: h5py.File, options: ReadOptions, config: Any, version: str | None) -> None:
        self.path, self.handle, self.options, self.root = path, handle, options, handle
        self.version = version or "3"
        self.stored_backend = "tensorflow"  # every Keras 3 backend stores correlation kernels alike
        self.backend = self.stored_backend
        self.major = 3
        self.config = config
        self.groups = vars_groups(handle)
        self.decls: dict[str, KerasLayerDecl] = {}

    def declarations(self, layer_names: list[str]) -> list[KerasLayerDecl]:
        if self.config is not None:
            decls, _ = model_layers(self.config, self.path)
        else:
            decls = [KerasLayerDecl(name, guess_class(key.split("/")[-1]), {"_containers": containers_of(key)})
                     for name, key in self.groups.items()]
        self.decls = {decl.name: decl for decl in decls}
        return decls

    def weights_of(self, name: str) -> dict[str, tuple[str, h5py.Dataset]]:
        if name not in self.groups:
            return {}
        group = self.handle[self.groups[name]]
        decl = self.decls.get(name)
        if decl is not None and decl.class_name == "Bidirectional":
            return self.bidirectional_weights(name, group, decl)
        datasets = [group["vars"]] + ([group["cell/vars"]] if "cell" in group and "vars" in group["cell"] else [])
        arrays = [(f"{g.name}/{k}", g[k]) for g in datasets for k in sorted(g, key=int)]
        for _, array in arrays:
            if isinstance(array, h5py.Dataset):
                hdf5.check_declared_size(array, self.path)
        names = keras3_variable_names(decl.class_name, decl.config) if decl else []
        if decl is not None and not names and not known_class(decl.class_name):  # a custom layer: vars/0, 1, ...
            names = [str(index) for index in range(len(arrays))]
        if len(names) != len(arrays):
            raise BadInputError(f"layer {name!r} has {len(arrays)} variables, its class "
                                f"{decl.class_name if decl else '?'} has {len(names)}",
                                fix="The weights do not match the architecture")
        return dict(zip(names, arrays))


    def bidirectional_weights(self, name: str, group: h5py.Group, decl: KerasLayerDecl
                              ) -> dict[str, tuple[str, h5py.Dataset]]:
        """A Bidirectional's variables: ``forward_layer/cell/vars`` and ``backward_layer/cell/vars``, named as
        its inner class holds them (the backward ones ``backward/kernel``, ..., as in a legacy file)."""
        inner = decl.config.get("layer", {}) if isinstance(decl.config.get("layer"), dict) else {}
        names = keras3_variable_names(str(inner.get("class_name", "")), dict(inner.get("config", {})))
        found: dict[str, tuple[str, h5py.Dataset]] = {}
        for direction, prefix in (("forward_layer", ""), ("backward_layer", "backward/")):
            cell = group.get(f"{direction}/cell/vars")
            arrays = [(f"{cell.name}/{k}", cell[k]) for k in sorted(cell, key=int)] if isinstance(cell, h5py.Group) else []
            for _, array in arrays:
                if isinstance(array, h5py.Dataset):
                    hdf5.check_declared_size(array, self.path)
            if len(names) != len(arrays):
                raise BadInputError(f"layer {name!r} has {len(arrays)} variables in {direction}, its class "
                                    f"{inner.get('class_name', '?')} has {len(names)}",
                                    fix="The weights do not match the architecture")
            found.update({prefix + variable: array for variable, array in zip(names, arrays)})
        return found


def known_class(class_name: str) -> bool:
    """True for a Keras class weightport reads (its variables named by :func:`keras3_variable_names`)."""
    return class_name in CONV_KINDS or class_name in WEIGHTED_SIMPLE or class_name in WEIGHTLESS or \
        class_name in ("Bidirectional", "TimeDistributed")


def vars_groups(handle: h5py.File) -> dict[str, str]:
    """Layer name -> HDF5 path of its group, from each ``vars`` group's ``name`` attribute."""
    found: dict[str, str] = {}
    seen = {handle.id}

    def children(group: h5py.Group) -> Any:
        return ((key, group["layers"][key]) for key in group["layers"]) if "layers" in group else iter(())

    pending = [children(handle)]
    while pending:  # depth first in stored order, as a recursive walk would go; each group once however
        entry = next(pending[-1], None)  # many hard links reach it
        if entry is None:
            pending.pop()
            continue
        key, child = entry
        if not isinstance(child, h5py.Group) or child.id in seen:
            continue
        seen.add(child.id)
        name = hdf5.text_attr(child["vars"].attrs, "name") if "vars" in child else None
        found[name or key] = child.name
        pending.append(children(child))
    return found


def containers_of(group_path: str) -> list[list[str]]:
    """The nested models holding a layer group, outermost first, as ``[class key, key]`` pairs:
    ``/layers/functional/layers/sequential_1/layers/conv2d`` -> ``[["functional", "functional"],
    ["sequential", "sequential_1"]]``."""
    keys = group_path.strip("/").split("/")[1:-2:2]
    return [[re.sub(r"_\d+$", "", key), key] for key in keys]
