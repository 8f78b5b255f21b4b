"""Keras model configs (JSON only, never code) -> canonical layer declarations.

Shared by every Keras reader (legacy HDF5 of Keras 1, 2, 3 and Keras 3
``.keras`` archives).  A Lambda layer's code stays an opaque string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from weightport.core.errors import UnsupportedError


@dataclass
class KerasLayerDecl:
    """One layer as the config declares it."""

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str] = field(default_factory=list)


def model_layers(model_config: Any, path: str) -> tuple[list[KerasLayerDecl], bool]:
    """Layer declarations of a Sequential or functional config, nested models expanded in place.

    Returns ``(layers, is_functional)``.
    """
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise UnsupportedError("model_config is not a Keras model config", path=path,
                               fix="Load the weights with a file written by model.save or save_weights")
    class_name = model_config["class_name"]
    config = model_config.get("config", {})
    aliases: dict[str, str] = {}  # nested model name -> its output layer
    if class_name == "Sequential":
        layers = config if isinstance(config, list) else config.get("layers", [])
        decls: list[KerasLayerDecl] = []
        for entry in layers:
            decls.extend(expand(entry, [decls[-1].name] if decls else [], path, aliases))
        return decls, False
    if class_name in ("Model", "Functional"):
        decls = []
        for entry in config.get("layers", []):
            tensors = inbound_tensors(entry.get("inbound_nodes", []))
            found = expand(entry, [name for name, _ in tensors], path, aliases)
            literals = call_literals(entry.get("inbound_nodes", []))
            if literals and len(found) == 1:  # an op layer's constant operands (Keras 3 NotEqual(x, 0))
                found[0].config = dict(found[0].config, _call_literals=literals)
            if any(index for _, index in tensors) and len(found) == 1:  # picks outputs of a multi-output layer
                found[0].config = dict(found[0].config, _input_indices=[index for _, index in tensors])
            decls.extend(found)
        for decl in decls:
            decl.inbound = [aliases.get(name, name) for name in decl.inbound]
        return decls, True
    raise UnsupportedError(f"model class {class_name!r} is not a Sequential or functional model", path=path,
                           fix="Save a Sequential or functional model; subclassed models carry no architecture")


def expand(entry: dict[str, Any], inbound: list[str], path: str, aliases: dict[str, str]) -> list[KerasLayerDecl]:
    """A layer entry, or the layers of a nested model wired to ``inbound``.

    A nested model's own inputs are replaced by the outer layers feeding it,
    and its name becomes an alias of its output layer (recorded in ``aliases``).
    """
    class_name = entry.get("class_name", "")
    config = entry.get("config", {})
    name = entry.get("name") or (config.get("name") if isinstance(config, dict) else None) or class_name
    if class_name in ("Sequential", "Model", "Functional"):
        inner, functional = model_layers(entry, path)
        inputs: dict[str, int] = {}  # input name -> its first position among the inputs
        for position, input_name in enumerate(d.name for d in inner if d.class_name == "InputLayer"):
            inputs.setdefault(input_name, position)
        if inbound:
            inner = [d for d in inner if d.class_name != "InputLayer"]
            for decl in inner:
                decl.inbound = [inbound[min(inputs[n], len(inbound) - 1)] if n in inputs else n
                                for n in decl.inbound]
            if inner and not inner[0].inbound:
                inner[0].inbound = list(inbound)
        outputs = config.get("output_layers") if functional and isinstance(config, dict) else None
        if outputs:
            first = outputs[0] if isinstance(outputs[0], list) else outputs
            aliases[str(name)] = str(first[0])
        elif inner:
            aliases[str(name)] = inner[-1].name
        container = ["sequential" if class_name == "Sequential" else "functional", str(name)]
        for decl in inner:  # outermost first: Keras 3 stores these layers under layers/<container>/layers/
            decl.config = dict(decl.config, _containers=[container] + decl.config.get("_containers", []))
        return inner
    return [KerasLayerDecl(str(name), str(class_name), config if isinstance(config, dict) else {}, list(inbound))]


def inbound_names(nodes: Any) -> list[str]:
    """Names of the layers feeding the first call of a layer (Keras 1/2 lists and Keras 3 dicts)."""
    return [name for name, _ in inbound_tensors(nodes)]


def inbound_tensors(nodes: Any) -> list[tuple[str, int]]:
    """(layer name, output index) of each tensor feeding the first call of a layer: the index picks one
    output of a layer with several (a Bidirectional with ``merge_mode=None``)."""
    if not nodes:
        return []
    node = nodes[0]
    found: list[tuple[str, int]] = []
    if isinstance(node, dict):
        collect_history(node.get("args", []), found)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, list) and item and isinstance(item[0], str):
                found.append((item[0], output_index(item[2:3])))
    return found


def output_index(value: list[Any]) -> int:
    return int(value[0]) if value and isinstance(value[0], int) and not isinstance(value[0], bool) else 0


def call_literals(nodes: Any) -> list[Any]:
    """The plain numbers among the positional arguments of a layer's first call (Keras 3 records an op
    layer's constant operands there: ``NotEqual`` of a tensor and ``0``)."""
    node = nodes[0] if isinstance(nodes, list) and nodes else None
    args = node.get("args", []) if isinstance(node, dict) else []
    return [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)] if isinstance(args, list) else []


def collect_history(value: Any, names: list[tuple[str, int]]) -> None:
    """(layer name, output index) of Keras 3 ``keras_history`` entries anywhere inside ``value``."""
    if isinstance(value, dict):
        history = value.get("config", {}).get("keras_history") if isinstance(value.get("config"), dict) else None
        if history:
            names.append((str(history[0]), output_index(list(history[2:3]))))
            return
        for item in value.values():
            collect_history(item, names)
    elif isinstance(value, list):
        for item in value:
            collect_history(item, names)


def input_shape(decls: list[KerasLayerDecl], model_config: dict[str, Any]) -> list[int | None] | None:
    """The model's input shape without the batch axis, in the source's own layout."""
    for decl in decls:
        for key in ("batch_shape", "batch_input_shape"):
            if decl.config.get(key):
                return list(decl.config[key])[1:]
        if decl.config.get("input_shape"):
            return list(decl.config["input_shape"])
    build = model_config.get("config", {})
    if isinstance(build, dict) and build.get("build_input_shape"):
        return list(build["build_input_shape"])[1:]
    return None
