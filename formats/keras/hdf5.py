"""Safe HDF5 access shared by the Keras readers: open, refuse what reaches outside, decode attributes.

HDF5 files can point outside themselves (external links, external raw
storage, virtual datasets); weightport reads only what the user pointed at, so
those are refused before any data is read.  Every object is visited once, however
many hard links reach it, so a small file whose links form a deep DAG or a cycle
costs time in proportion to its objects, not to its paths.  A dataset's declared
size is checked against what the file holds (:func:`check_declared_size`) before
it is read.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from weightport.core import budget
from weightport.core.describe import parse_json
from weightport.core.dtypes import BFLOAT16, as_bfloat16, bfloat16, is_bfloat16
from weightport.core.errors import BadInputError, UnsafeInputError
from weightport.core.streaming import write_planned

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_OVERHEAD = 4096  # bytes of object headers and attributes allowed per dataset or group, for the free-space check

# What h5py raises on a damaged file (wrong B-tree signatures, bad object headers, ...).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)


def is_hdf5(path: str) -> bool:
    """True when the file starts with the HDF5 signature (at offset 0, 512, 1024, ...)."""
    try:
        with open(path, "rb") as handle:
            for offset in (0, 512, 1024, 2048):
                handle.seek(offset)
                if handle.read(8) == HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


def open_hdf5(path: str) -> h5py.File:
    """Open ``path`` read-only after checking it is HDF5 and reaches nothing outside itself."""
    if not is_hdf5(path):
        raise BadInputError("not an HDF5 file (no HDF5 signature); it may be truncated or another format",
                            path=path, fix="Check the file was copied completely, or pass the right file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise BadInputError(f"HDF5 file cannot be opened ({first_line(error)})", path=path,
                            fix="The file is damaged or truncated; export it again") from None
    try:
        refuse_outside_references(handle, path)
    except H5_ERRORS as error:
        handle.close()
        raise BadInputError(f"HDF5 structure is damaged ({first_line(error)})", path=path,
                            fix="The file is damaged or truncated; export it again") from None
    except BaseException:
        handle.close()
        raise
    return handle


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def refuse_outside_references(group: h5py.Group, path: str) -> None:
    """Raise :class:`UnsafeInputError` on external links, external storage or virtual datasets.

    Walks every object reachable from ``group`` once (hard links may share or loop back to a group)."""
    seen: set[Any] = {group.id}
    pending = [group]
    while pending:
        current = pending.pop()
        for name in current:
            link = current.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise UnsafeInputError(f"HDF5 external link {current.name.rstrip('/')}/{name} -> {link.filename}",
                                       path=path, fix="weightport reads only the file given; embed the data in it")
            if isinstance(link, h5py.SoftLink):
                continue
            try:
                item = current[name]
            except (KeyError, OSError) as error:
                raise BadInputError(f"HDF5 object {name!r} cannot be read ({first_line(error)})", path=path,
                                    fix="The file is damaged; export it again") from None
            if item.id in seen:
                continue
            seen.add(item.id)
            if isinstance(item, h5py.Group):
                pending.append(item)
            elif isinstance(item, h5py.Dataset):
                if item.is_virtual:
                    raise UnsafeInputError(f"HDF5 virtual dataset {item.name}", path=path,
                                           fix="weightport reads only the file given; materialize the dataset")
                if item.external:
                    raise UnsafeInputError(f"HDF5 dataset {item.name} keeps its data in external files",
                                           path=path, fix="weightport reads only the file given; embed the data")


def check_declared_size(dataset: h5py.Dataset, path: str) -> None:
    """Refuse a dataset that declares more than the file can hold, before it is read: an unfiltered one may
    not be larger than the file ``path`` (a dataset never written reads back as its fill value, gigabytes of
    it from a small file), a filtered (compressed) one may not expand its stored chunks more than
    :data:`weightport.core.budget.MAX_COMPRESSION_RATIO` times."""
    what = f"dataset {dataset.name}"
    nbytes = budget.declared_elements(dataset.shape or (), path, what) * dataset.dtype.itemsize
    if dataset.id.get_create_plist().get_nfilters():
        budget.check_compressed_bytes(nbytes, dataset.id.get_storage_size(), path, what)
    else:
        budget.check_stored_bytes(nbytes, budget.file_size(path), path, what)


def decode(value: Any) -> Any:
    """An HDF5 attribute value as Python text/lists (h5py 2 fixed-length bytes and h5py 3 strings alike)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [decode(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [decode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def text_attr(attrs: h5py.AttributeManager, name: str) -> str | None:
    if name not in attrs:
        return None
    value = decode(attrs[name])
    return value if isinstance(value, str) else str(value)


def name_list_attr(attrs: h5py.AttributeManager, name: str) -> list[str]:
    """A list-of-names attribute, joined from chunks ``name0``, ``name1``, ... when Keras split it."""
    if name in attrs:
        return [str(v) for v in decode(attrs[name])]
    names: list[str] = []
    chunk = 0
    while f"{name}{chunk}" in attrs:
        names.extend(str(v) for v in decode(attrs[f"{name}{chunk}"]))
        chunk += 1
    return names


# Keras's limit for one attribute (keras saving/legacy/hdf5_format.py HDF5_OBJECT_HEADER_LIMIT): an HDF5
# object header message holds at most 64 KiB.
HDF5_OBJECT_HEADER_LIMIT = 64512


def write_name_list(attrs: h5py.AttributeManager, name: str, names: list[str]) -> None:
    """Write a list-of-names attribute as Keras does (``save_attributes_to_hdf5_group``): one attribute
    when it fits in :data:`HDF5_OBJECT_HEADER_LIMIT` bytes, else the fewest equal chunks ``name0``,
    ``name1``, ... (``np.array_split``) that each fit."""
    data = np.array([n.encode("utf8") for n in names], dtype="S") if names else np.array([], dtype="S1")
    chunks = 1
    parts = np.array_split(data, chunks)
    while any(part.nbytes > HDF5_OBJECT_HEADER_LIMIT for part in parts):
        chunks += 1
        parts = np.array_split(data, chunks)
    if chunks == 1:
        attrs[name] = data
        return
    for index, part in enumerate(parts):
        attrs[f"{name}{index}"] = part


def json_attr(attrs: h5py.AttributeManager, name: str, path: str) -> Any:
    """A JSON attribute parsed as data only (never evaluated)."""
    text = text_attr(attrs, name)
    return None if text is None else parse_json(text, path, f"attribute {name!r}")


def is_bfloat16_dataset(dataset: h5py.Dataset) -> bool:
    """Keras 3 stores bfloat16 as opaque 2-byte words marked ``attrs["dtype"] = "bfloat16"``."""
    return dataset.dtype.itemsize == 2 and text_attr(dataset.attrs, "dtype") == BFLOAT16


def dataset_dtype(dataset: h5py.Dataset) -> np.dtype:
    """The NumPy dtype of a dataset's values (bfloat16 for Keras 3's marked 2-byte words)."""
    return bfloat16() if is_bfloat16_dataset(dataset) else dataset.dtype


def create_dataset(group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
    """Write ``array`` as ``group[name]``; bfloat16 as Keras 3 writes it (opaque words + dtype attribute)."""
    dataset = group.create_dataset(name, data=array)
    if is_bfloat16(array.dtype):
        dataset.attrs["dtype"] = BFLOAT16
    return dataset


class StreamedDatasets:
    """Datasets of one output file whose bytes are written tensor by tensor, straight into the file.

    :meth:`add` makes each dataset contiguous, unfiltered, with its place in the file reserved at once
    (``H5D_ALLOC_TIME_EARLY``) and no fill value written (``H5D_FILL_TIME_NEVER``), and notes where its
    bytes go; once h5py has closed the file, :meth:`fill` streams every planned tensor there in C order
    (:func:`weightport.core.streaming.write_planned`), so memory is bounded by the largest tensor, not the
    model, and the file is what h5py would have written with ``data=``.  bfloat16 is Keras 3's opaque
    2-byte words with ``attrs["dtype"] = "bfloat16"``, as :func:`create_dataset`.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int, Any, np.dtype | None]] = []  # (file offset, PlannedTensor, cast)

    def add(self, group: h5py.Group, name: str, item: Any, cast: np.dtype | None = None) -> None:
        """``group[name]`` for planned tensor ``item`` (values cast to ``cast`` when given)."""
        dtype = np.dtype(cast) if cast is not None else np.dtype(item.dtype).newbyteorder("<")
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        dataset = group.create_dataset(name, shape=tuple(item.shape), dtype=dtype, dcpl=dcpl)
        if is_bfloat16(dtype):
            dataset.attrs["dtype"] = BFLOAT16
        offset = dataset.id.get_offset()
        if offset is not None:
            self.pending.append((offset, item, cast))
        elif dataset.size:  # a scalar has no place of its own in the file: written by h5py
            dataset[()] = item.load().astype(dtype)

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(item.shape, dtype=np.int64)) * np.dtype(cast or item.dtype).itemsize
                   for _, item, cast in self.pending)

    def fill(self, path: str, progress: Any) -> None:
        """Write every noted tensor's bytes at its place in the (closed) HDF5 file ``path``."""
        with open(path, "rb+") as handle:
            for offset, item, cast in self.pending:
                handle.seek(offset)
                write_planned(handle, item, progress, cast)


def dataset_reader(dataset: h5py.Dataset):
    """A function reading the whole dataset as a NumPy array (called only when the tensor is written).

    A contiguous, unfiltered dataset of a file on disk is memory-mapped
    (read-only) instead of copied, so converting it costs no fresh memory.
    """
    def read() -> np.ndarray:
        try:
            if not isinstance(dataset, h5py.Dataset):  # a view joining several datasets (Keras 1 gates)
                return dataset[()]
            if is_bfloat16_dataset(dataset):
                return as_bfloat16(dataset[()])
            mapped = mapped_dataset(dataset)
            return mapped if mapped is not None else dataset[()]
        except H5_ERRORS as error:
            raise BadInputError(f"dataset {dataset.name} cannot be read ({first_line(error)})",
                                path=dataset.file.filename, fix="The file is damaged; export it again") from None
    return read


def mapped_dataset(dataset: h5py.Dataset) -> np.ndarray | None:
    """A read-only memory map of ``dataset``'s bytes, or None when it is chunked, filtered, not plain
    numbers, not in a file on disk, or its recorded place does not lie inside the file."""
    dtype = dataset.dtype
    if dataset.chunks is not None or dtype.kind not in "fiub" or dtype.fields is not None or dataset.size == 0:
        return None
    if dataset.file.driver != "sec2" or dataset.external:
        return None
    offset = dataset.id.get_offset()
    filename = dataset.file.filename
    nbytes = int(dataset.size) * dtype.itemsize
    if offset is None or dataset.id.get_storage_size() != nbytes or not os.path.isfile(filename):
        return None
    if offset + nbytes > os.path.getsize(filename):
        return None
    return np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=dataset.shape)
