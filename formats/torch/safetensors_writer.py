"""safetensors output (``--to torch``, ``.safetensors``): the torch plan's tensors streamed into the file one at
a time, with weightport's graph metadata; torch is never imported.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from weightport.core.atomic import atomic_path
from weightport.core.describe import graph_metadata
from weightport.core.errors import BadInputError
from weightport.core.layout import materialize
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.formats.torch.plan import torch_plan
from weightport.core.progress import Progress
from weightport.core.streaming import write_bytes, write_in_background

from weightport.formats.torch.safetensors_reader import dtype_code

def header_bytes(header: dict[str, Any]) -> bytes:
    """Serialized header padded with spaces to a multiple of 8, preceded by its length."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write the torch-target plan of ``model`` to ``path``, streaming one tensor at a time."""
    plan = torch_plan(model, options)
    metadata = {"format": "pt", "weightport.graph": json.dumps(graph_metadata(model), separators=(",", ":"))}
    metadata.update(options.metadata)
    if plan.warnings:
        metadata["weightport.warnings"] = json.dumps(plan.warnings)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for item in plan.tensors:
        header[item.key] = {"dtype": dtype_code(item.dtype), "shape": list(item.shape),
                            "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    with atomic_path(path, options.force) as temporary, Progress(f"writing {os.path.basename(path)}", offset,
                                                                options.quiet) as progress:
        with open(temporary, "wb") as handle:
            handle.write(header_bytes(header))
            for item in plan.tensors:
                counted = [0]

                def write_block(block: np.ndarray) -> None:
                    little = materialize(block.astype(block.dtype.newbyteorder("<"), copy=False))
                    counted[0] += write_bytes(handle, little)

                write_in_background(item.blocks(), write_block)
                written = counted[0]
                if written != item.nbytes:
                    raise BadInputError(f"tensor {item.key} came out as {written} bytes, planned {item.nbytes}")
                progress.advance(item.key, written)
    return plan.warnings
