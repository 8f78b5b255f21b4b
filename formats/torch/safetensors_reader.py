"""safetensors files, read and written in plain NumPy (no torch, no safetensors package needed).

Format: 8-byte little-endian header length N, N bytes of JSON header
(``{"__metadata__": {str: str}, key: {"dtype", "shape", "data_offsets"}}``,
padded with spaces to a multiple of 8), then the tensors' little-endian bytes
back to back.  The reader enforces the safetensors rules: bounded header,
known dtypes, offsets contiguous, in bounds and covering the buffer exactly.
The writer streams one tensor at a time after the header.

weightport stores the canonical graph in ``__metadata__["weightport.graph"]``
so a file it wrote reads back with kinds, attributes and layouts.

A sharded checkpoint is read through its index, ``NAME.safetensors.index.json`` (Hugging Face's layout:
``{"weight_map": {key: shard file name}}``): every shard is checked as above, must sit in the index's
folder (a bare file name, nothing else), and must hold exactly the keys the index gives it.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from weightport.core.budget import declared_elements
from weightport.core.describe import parse_json
from weightport.core.dtypes import BFLOAT16, bfloat16, is_bfloat16
from weightport.core.errors import BadInputError, WeightportError
from weightport.core.layout import Layout
from weightport.core.model import Layer, Model, Provenance, SourceInfo, Tensor, place_tensor, state_key
from weightport.core.options import ReadOptions
from weightport.core.shapes import check_acyclic

NAME = "safetensors"
DESCRIPTION = "safetensors (PyTorch state_dict, no pickle)"
EXTENSIONS = (".safetensors", ".safetensors.index.json")
INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX = 64 * 1024 * 1024  # bytes of index JSON (a million keys with long names fit)

MAX_HEADER = 100 * 1024 * 1024
MAX_RANK = 32  # axes of one tensor (NumPy's own limit before 2.0)
DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?", "BF16": BFLOAT16,
}
CODES: dict[str, str] = {np.dtype(v).str.replace("|", "<"): k for k, v in DTYPES.items() if v != BFLOAT16}


def numpy_dtype(code: str) -> np.dtype:
    """NumPy dtype of a safetensors dtype code (``BF16`` needs ml_dtypes, imported only then)."""
    return bfloat16() if code == "BF16" else np.dtype(DTYPES[code])


def itemsize(code: str) -> int:
    return 2 if code == "BF16" else np.dtype(DTYPES[code]).itemsize


def dtype_code(dtype: np.dtype) -> str:
    """safetensors dtype code of a NumPy dtype (``float32`` -> ``F32``, ml_dtypes ``bfloat16`` -> ``BF16``)."""
    if is_bfloat16(dtype):
        return "BF16"
    key = np.dtype(dtype).newbyteorder("<").str.replace("|", "<")
    if key not in CODES:
        raise BadInputError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors",
                            fix="Convert the tensor to a float or integer dtype")
    return CODES[key]


def sniff(path: str) -> bool:
    if path.lower().endswith(INDEX_SUFFIX):
        return os.path.isfile(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < MAX_HEADER


def read_header(path: str) -> tuple[dict[str, Any], int]:
    """The validated header and the offset of the data buffer."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise BadInputError("safetensors file shorter than its 8-byte header length", path=path,
                                fix="The file is truncated; write it again")
        length = struct.unpack("<Q", head)[0]
        if length > MAX_HEADER or 8 + length > size:
            raise BadInputError(f"safetensors header length {length} is larger than allowed or than the file",
                                path=path, fix="The file is truncated or not safetensors")
        raw = handle.read(length)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError("safetensors header is not valid JSON", path=path,
                            fix="The file is damaged; write it again") from None
    header = parse_json(text, path, "safetensors header")
    if not isinstance(header, dict):
        raise BadInputError("safetensors header is not a JSON object", path=path, fix="Write the file again")
    check_entries(header, size - 8 - length, path)
    return header, 8 + length


def check_entries(header: dict[str, Any], buffer_size: int, path: str) -> None:
    """Every entry well-formed, offsets contiguous from 0 and covering the buffer exactly."""
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise BadInputError("safetensors __metadata__ must map strings to strings", path=path,
                                    fix="Write the file again")
            continue
        if (not isinstance(entry, dict) or entry.get("dtype") not in DTYPES
                or not isinstance(entry.get("shape"), list) or len(entry["shape"]) > MAX_RANK
                or not all(isinstance(n, int) and n >= 0 for n in entry["shape"])
                or not isinstance(entry.get("data_offsets"), list) or len(entry["data_offsets"]) != 2
                or not all(isinstance(n, int) for n in entry["data_offsets"])):
            raise BadInputError(f"safetensors entry {key!r} is malformed", path=path, fix="Write the file again")
        begin, end = entry["data_offsets"]
        expected = declared_elements(entry["shape"], path, f"safetensors entry {key!r}") * itemsize(entry["dtype"])
        if end - begin != expected:
            raise BadInputError(f"safetensors entry {key!r} declares {end - begin} bytes for shape "
                                f"{entry['shape']} ({expected} needed)", path=path, fix="Write the file again")
        spans.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise BadInputError(f"safetensors entry {key!r} is not contiguous with the previous one", path=path,
                                fix="Write the file again")
        position = end
    if position != buffer_size:
        raise BadInputError(f"safetensors data buffer is {buffer_size} bytes but entries cover {position}",
                            path=path, fix="The file is truncated or padded; write it again")


def read(path: str, options: ReadOptions) -> Model:
    """Read a safetensors file (or a sharded checkpoint by its index); a weightport-written file regains its
    graph from the metadata.

    Each key is placed in O(1) (:meth:`Model.layer` is indexed), so reading is linear in the keys."""
    if path.lower().endswith(INDEX_SUFFIX):
        return model_from_tensors(path, *sharded_tensors(path))
    header, data_start = read_header(path)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    tensors = {key: file_tensor(path, key, entry, data_start) for key, entry in entries.items()}
    return model_from_tensors(path, header.get("__metadata__", {}), tensors)


def sharded_tensors(index_path: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The merged metadata and the lazy tensors of every shard an index names, each shard checked."""
    if os.path.getsize(index_path) > MAX_INDEX:
        raise BadInputError(f"safetensors index is larger than {MAX_INDEX} bytes", path=index_path,
                            fix="This is not a checkpoint index; give the .safetensors file itself")
    with open(index_path, "rb") as handle:
        index = parse_json(handle.read().decode("utf-8", "replace"), index_path, "safetensors index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise BadInputError("safetensors index has no weight_map of key -> shard file name", path=index_path,
                            fix="Give the index file transformers wrote (NAME.safetensors.index.json)")
    folder = os.path.dirname(os.path.abspath(index_path))
    metadata: dict[str, str] = {}
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise BadInputError(f"safetensors index names a shard outside its folder: {shard!r}", path=index_path,
                                fix="Shards must be file names in the index's own folder")
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise BadInputError(f"shard {shard!r} named by the index is missing", path=index_path,
                                fix="Copy every shard next to the index")
        header, data_start = read_header(shard_path)
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        wanted = {key for key, name in weight_map.items() if name == shard}
        if set(entries) != wanted:
            odd = sorted(set(entries) ^ wanted)[:3]
            raise BadInputError(f"shard {shard!r} does not hold the keys its index gives it (e.g. {odd})",
                                path=index_path, fix="The index and its shards come from different saves")
        for key, value in header.get("__metadata__", {}).items():
            metadata.setdefault(key, value)
        tensors.update({key: file_tensor(shard_path, key, entries[key], data_start) for key in sorted(wanted)})
    return metadata, {key: tensors[key] for key in weight_map}


def model_from_tensors(path: str, metadata: dict[str, str], tensors: dict[str, Tensor]) -> Model:
    """The model of a state dict's tensors, with the graph a weightport-written file stores in its metadata."""
    graph = graph_from_metadata(metadata, path)
    model = Model(SourceInfo(path, NAME, metadata.get("weightport.version"), None,
                             {"written_by_weightport": graph is not None}))
    if graph is not None:
        model.has_architecture = graph.get("has_architecture", True) is not False  # False: from a weights-only file
        for spec in graph["layers"]:
            layer = Layer(spec["name"], spec["kind"], spec["attrs"], {}, spec["inputs"], spec.get("class"),
                          output_shape=tuple(spec["output_shape"]) if spec.get("output_shape") else None)
            for param, layout in spec["params"].items():
                tensor = tensors.pop(state_key(layer.name, param), None)
                if tensor is not None:
                    tensor.name = param
                    tensor.layout = Layout(layout["layout"], layout["semantics"])
                    tensor.provenance = Provenance(tensor.provenance.source_key, layout["layout"], layout["semantics"])
                    layer.tensors[param] = tensor
            model.layers.append(layer)
        check_acyclic(model)
        if graph.get("first_output"):
            model.source.details["first_output"] = graph["first_output"]
    for key, tensor in tensors.items():
        place_tensor(model, key, tensor)
    return model


def graph_from_metadata(metadata: dict[str, str], path: str) -> dict[str, Any] | None:
    """The canonical graph weightport stored in the header, checked for the fields the reader uses."""
    if "weightport.graph" not in metadata:
        return None
    graph = parse_json(metadata["weightport.graph"], path, "weightport graph metadata")
    try:
        for spec in graph["layers"]:
            if not (isinstance(spec["name"], str) and isinstance(spec["kind"], str) and isinstance(spec["attrs"], dict)
                    and isinstance(spec["inputs"], list) and all(isinstance(n, str) for n in spec["inputs"])
                    and isinstance(spec["params"], dict) and isinstance(spec.get("class"), (str, type(None)))
                    and isinstance(spec.get("output_shape") or [], list)
                    and all(isinstance(n, int) or n is None for n in spec.get("output_shape") or [])):
                raise TypeError("bad layer entry")
            for layout in spec["params"].values():
                Layout(layout["layout"], layout["semantics"])
        if not isinstance(graph.get("first_output") or "", str):
            raise TypeError("bad first_output")
    except (ValueError, KeyError, TypeError, WeightportError) as error:
        raise BadInputError(f"weightport graph metadata is damaged ({type(error).__name__})", path=path,
                            fix="Write the file again") from None
    return graph


def file_tensor(path: str, key: str, entry: dict[str, Any], data_start: int) -> Tensor:
    """A lazy tensor reading its bytes from the file with a memory map."""
    dtype = numpy_dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    offset = data_start + entry["data_offsets"][0]

    def read_array() -> np.ndarray:
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)

    pattern = " ".join(f"a{k}" for k in range(len(shape))) if shape else ""
    return Tensor(key, shape, dtype, Layout(pattern), Provenance(key, pattern), read_array)
