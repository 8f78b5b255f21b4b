"""JSON-ready descriptions of a canonical model (for inspect --json, explain and file metadata), and the one
way JSON read from a file is parsed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from weightport.core.budget import check_nesting, MAX_NESTING
from weightport.core.errors import BadInputError
from weightport.core.model import Layer, Model, Tensor


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe_tensor(tensor: Tensor) -> dict[str, Any]:
    return {
        "shape": list(tensor.shape),
        "dtype": np.dtype(tensor.dtype).name,
        "layout": tensor.layout.compact(),
        "semantics": tensor.layout.semantics,
        "source_key": tensor.provenance.source_key,
        "source_layout": tensor.provenance.source_layout,
        "source_semantics": tensor.provenance.source_semantics,
        "transforms": tensor.applied(),
        "rule": tensor.provenance.rule,
    }


def describe_layer(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "class": layer.source_class,
        "inputs": list(layer.inputs),
        "attrs": jsonable(layer.attrs),
        "semantics_rule": layer.semantics_rule,
        "output_shape": list(layer.output_shape) if layer.output_shape is not None else None,
        "tensors": {name: describe_tensor(t) for name, t in layer.tensors.items()},
    }


def describe_model(model: Model) -> dict[str, Any]:
    source = model.source
    return {
        "source": {"path": source.path, "format": source.format, "version": source.version,
                   "backend": source.backend, **jsonable(source.details)},
        "has_architecture": model.has_architecture,
        "layers": [describe_layer(layer) for layer in model.layers],
        "warnings": list(model.warnings),
    }


def graph_metadata(model: Model) -> dict[str, Any]:
    """The architecture part of a model, small enough for a file header (no tensor provenance).
    ``has_architecture`` false: the layers of a weights-only source (kinds and tensors, no weightless layers,
    order or shapes), which a reader must not run as a whole model.  ``first_output``: the layer giving an ONNX
    graph's first declared output (what onnxruntime returns first), where that is not the last layer's."""
    declared = next(iter((model.source.details.get("outputs") or {}).values()), None)
    return {
        "first_output": declared,
        "source": {"path": model.source.path, "format": model.source.format,
                   "version": model.source.version, "backend": model.source.backend},
        "has_architecture": model.has_architecture,
        "layers": [{"name": l.name, "kind": l.kind, "class": l.source_class, "inputs": list(l.inputs),
                    "attrs": jsonable(l.attrs),
                    "output_shape": list(l.output_shape) if l.output_shape is not None else None,
                    "params": {name: {"layout": t.layout.pattern, "semantics": t.layout.semantics}
                               for name, t in l.tensors.items()}} for l in model.layers],
    }


def parse_json(text: str | bytes, path: str, what: str) -> Any:
    """JSON read from a file (a Keras config, a safetensors header, weightport's graph metadata), parsed as
    data only and under the budget: invalid JSON, a key repeated within one object (which value wins
    would be the parser's choice) and nesting deeper than :data:`~weightport.core.budget.MAX_NESTING` are
    refused with a :class:`BadInputError` naming ``path``."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(pairs)
        if len(value) != len(pairs):
            seen: set[str] = set()
            repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
            raise BadInputError(f"{what} has a duplicate key {repeated[:80]!r} in one object", path=path,
                                fix="The file is damaged or crafted; write it again")
        return value
    try:
        value = json.loads(text, object_pairs_hook=unique)
    except RecursionError:
        raise BadInputError(f"{what} is nested more than {MAX_NESTING} levels deep", path=path,
                            fix="The file is damaged or crafted; write it again") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise BadInputError(f"{what} is not valid JSON ({error})", path=path,
                            fix="The file is damaged; write it again") from None
    check_nesting(value, path, what)
    return value
