"""safetensors output (``--to torch``): the torch plan's tensors streamed into the file one at a time, with
weightport's graph metadata; torch is never imported.

``-o NAME.safetensors`` writes one file.  ``-o NAME.safetensors.index.json`` writes the sharded layout Hugging
Face uses: ``NAME-00001-of-0000N.safetensors`` shards of at most ``--max-shard-size`` bytes of tensor data
(default 5 GB; a larger tensor gets a shard of its own), each a complete safetensors file, and the index
``{"metadata": {"total_size": bytes}, "weight_map": {key: shard}}`` that ``transformers`` and
``safetensors``-based loaders read.  The first shard carries weightport's graph metadata.  Every file is
written to a temporary beside it and renamed only when all are complete.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from weightport.core.atomic import atomic_paths, check_free_space
from weightport.core.describe import graph_metadata
from weightport.core.errors import UsageError, option
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.core.plan import PlannedTensor
from weightport.core.progress import Progress
from weightport.core.streaming import write_planned
from weightport.formats.torch.plan import torch_plan
from weightport.formats.torch.safetensors_reader import INDEX_SUFFIX, dtype_code

DEFAULT_SHARD_SIZE = 5 * 1000**3  # bytes of tensor data per shard when an index is asked for (transformers' default)


def header_bytes(header: dict[str, Any]) -> bytes:
    """Serialized header padded with spaces to a multiple of 8, preceded by its length."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def file_header(items: list[PlannedTensor], metadata: dict[str, str]) -> dict[str, Any]:
    """The header of one safetensors file holding ``items`` back to back, in order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for item in items:
        header[item.key] = {"dtype": dtype_code(item.dtype), "shape": list(item.shape),
                            "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    return header


def shards_of(items: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    """``items`` in order, cut into runs of at most ``max_bytes`` (a larger tensor alone in its run)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def shard_names(index_path: str, count: int) -> list[str]:
    """``NAME-00001-of-0000N.safetensors`` beside ``NAME.safetensors.index.json``."""
    stem = os.path.basename(index_path)[: -len(INDEX_SUFFIX)]
    return [f"{stem}-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def write_tensors(path: str, header: dict[str, Any], items: list[PlannedTensor], progress: Progress) -> None:
    """The header, then each tensor's little-endian bytes, streamed block by block."""
    with open(path, "wb") as handle:
        handle.write(header_bytes(header))
        for item in items:
            write_planned(handle, item, progress)


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write the torch-target plan of ``model`` to ``path`` (one file, or shards and their index)."""
    plan = torch_plan(model, options)
    metadata = {"format": "pt", "weightport.graph": json.dumps(graph_metadata(model), separators=(",", ":"))}
    metadata.update(options.metadata)
    if plan.warnings:
        metadata["weightport.warnings"] = json.dumps(plan.warnings)
    total = sum(item.nbytes for item in plan.tensors)
    sharded = path.lower().endswith(INDEX_SUFFIX)
    limit = options.max_shard_size or (DEFAULT_SHARD_SIZE if sharded else None)
    shards = shards_of(plan.tensors, limit) if limit else [plan.tensors]
    if not sharded and len(shards) > 1:
        raise UsageError(f"the tensors ({total} bytes) do not fit one shard of {option('max_shard_size', limit)} bytes",
                         path=path, fix=f"Name the output {os.path.basename(path)[:-len('.safetensors')] or 'model'}"
                                        f"{INDEX_SUFFIX} to write shards and their index")
    headers = [file_header(items, metadata if k == 0 else {"format": "pt"}) for k, items in enumerate(shards)]
    check_free_space(path, total + sum(len(header_bytes(h)) for h in headers) + (4096 if sharded else 0))
    with Progress(f"writing {os.path.basename(path)}", total, options.quiet) as progress:
        if not sharded:
            with atomic_paths([path], options.force) as (temporary,):
                write_tensors(temporary, headers[0], shards[0], progress)
            return plan.warnings
        names = shard_names(path, len(shards))
        folder = os.path.dirname(os.path.abspath(path))
        index = {"metadata": {"total_size": total},
                 "weight_map": {item.key: name for name, items in zip(names, shards) for item in items}}
        with atomic_paths([path] + [os.path.join(folder, name) for name in names], options.force) as temporaries:
            for temporary, header, items in zip(temporaries[1:], headers, shards):
                write_tensors(temporary, header, items, progress)
            with open(temporaries[0], "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=2)
    return plan.warnings
