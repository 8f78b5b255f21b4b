"""PyTorch ``.pt`` state_dict files (``torch.save``), read with ``torch.load(weights_only=True)``.

torch is imported only here, only when such a file is read or written.
Keys follow the torch plan (``<layer>.<param>``); layouts are canonical.

Before torch reads anything, the archive's members are checked against the archive (a deflated
storage may not expand beyond the compression-ratio bound; members sharing bytes may not add up beyond
it either).  After loading, which only maps the stored bytes, each tensor must be a dense CPU tensor
whose view declares no more bytes than its storage holds: a zero-stride ``expand()`` or overlapping
strides would otherwise turn a few stored bytes into gigabytes when the view is written out.
"""

from __future__ import annotations

import zipfile

from weightport.core.budget import (check_archive_members, check_compressed_bytes, check_stored_bytes, file_size,
                                    require_regular_file)
from weightport.core.dtypes import tensor_to_numpy
from weightport.core.errors import BadInputError, MissingDependencyError, UnsupportedError
from weightport.core.layout import Layout
from weightport.core.model import Model, Provenance, SourceInfo, array_tensor, place_tensor
from weightport.core.options import ReadOptions
from weightport.formats.torch.checkpoint import find_state_dict
from weightport.formats.torch.legacy import check_legacy, sniff_legacy

NAME = "torch_pt"
DESCRIPTION = "PyTorch state_dict saved with torch.save (.pt, .pth)"
EXTENSIONS = (".pt", ".pth")


def import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch", "Reading or writing .pt files") from None
    return torch


def sniff(path: str) -> bool:
    """A torch.save file is a zip archive holding ``*/data.pkl``, or (before torch 1.6) a pickle stream
    starting with the pickled magic number 0x1950a86a20f9469cfc6c."""
    require_regular_file(path)  # before opening: a FIFO blocks, /dev/zero never ends
    if sniff_legacy(path):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def check_archive(path: str) -> None:
    """The members of a zip ``.pt`` (torch.save writes them stored) within the budget, before torch reads
    any; a legacy (pre-zip) file's storages all present in full (:func:`~weightport.formats.torch.legacy.check_legacy`)."""
    if sniff_legacy(path):
        check_legacy(path)
        return
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive_members(archive.infolist(), file_size(path), path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise BadInputError(f"the zip archive is damaged ({first_line(error)})", path=path,
                            fix="Save the state_dict again with torch.save") from None


def file_format(path: str) -> str:
    """What the file says of how it was saved (a .pt records no torch version): ``zip format N`` (the
    archive's ``*/version`` record, 3 for torch 1.6 and later) or ``legacy format (torch < 1.6)``."""
    if sniff_legacy(path):
        return "legacy format (torch < 1.6)"
    try:
        with zipfile.ZipFile(path) as archive:
            record = next((name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/version")), None)
            number = archive.read(record)[:16].decode("ascii", "replace").strip() if record else ""
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        number = ""
    return f"zip format {number}" if number.isdigit() else "zip format"


def check_tensor(torch, key: str, value, path: str) -> int:
    """A dense CPU tensor whose view fits its storage; the bytes the view declares."""
    if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
        raise UnsupportedError(f"tensor {key!r} is a {value.layout} {value.device.type} tensor"
                               f"{' (quantized)' if value.is_quantized else ''}; only dense tensors are read",
                               path=path, fix="Save dense tensors (tensor.to_dense(), dequantize())")
    declared = value.numel() * value.element_size()
    check_stored_bytes(declared, value.untyped_storage().nbytes(), path, f"tensor {key!r}")
    return declared


def read(path: str, options: ReadOptions) -> Model:
    """Read a state_dict with torch.load(weights_only=True): no code from the file runs.

    Zip (torch >= 1.6) and legacy files alike; the state dict is found inside a checkpoint dict
    (:mod:`weightport.formats.torch.checkpoint`, ``options.key``), every key kept exactly."""
    require_regular_file(path)
    torch = import_torch()
    check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        raise BadInputError(f"torch.load(weights_only=True) refused the file ({first_line(error)})",
                            path=path, fix="Only plain state_dicts of tensors can be read") from None
    state, notes = find_state_dict(state, torch, options.key, path)
    tensors = list(state.items())
    for key, _ in tensors:
        if not isinstance(key, str):
            raise BadInputError(f"the state_dict has a key {type(key).__name__} {str(key)[:40]!r}", path=path,
                                fix="Save model.state_dict(): its keys are strings")
    declared = sum(check_tensor(torch, key, value, path) for key, value in tensors)
    check_compressed_bytes(declared, file_size(path), path, "the state_dict (all tensors together)")
    model = Model(SourceInfo(path, NAME, file_format(path), None))
    for key, value in tensors:
        try:
            array = tensor_to_numpy(torch, value)
        except (TypeError, RuntimeError, ValueError) as error:
            raise UnsupportedError(f"tensor {key!r} cannot be read as an array ({first_line(error)})", path=path,
                                   fix="Save tensors of standard dtypes") from None
        pattern = " ".join(f"a{k}" for k in range(array.ndim))
        place_tensor(model, key, array_tensor(key, array, Layout(pattern), Provenance(key, pattern)))
    for note in notes:
        model.warn(note)
    return model
