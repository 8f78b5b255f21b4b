"""The ONNX target checked in onnxruntime (``--to onnx``: a traced graph, or a ``--template`` filled in).

The converted ``.onnx`` is opened with ``onnx.load`` and run by onnxruntime, never read with weightport's
reader or layout code, so a mistake shared by weightport's writer and reader cannot cancel out.

* **Structure** (names check): the graph passes ``onnx.checker``, and each weighted source layer has its
  node in it (``Conv``, ``ConvTranspose``, two ``Conv`` for a separable conv, ``Gemm`` or ``MatMul`` [+
  ``Add``], ``BatchNormalization``, ``LSTM``, ``GRU``, ``PRelu``, ``Gather``) with constant weights of the
  shapes the source's tensors give (ONNX layouts are the canonical ones; ``Gemm`` ``transB=0`` and
  ``MatMul`` hold ``(in, out)``; an RNN's ``W``/``R`` stack its directions).  A node is found by its
  weights' names (``<layer>.<param>``) or its exporter scope (``/<layer>/Conv``), else by its position
  among the nodes of its kind.  A weight computed from constants (an ``Identity``, a ``Transpose`` of an
  initializer) is evaluated by onnxruntime.
* **Layer by layer**: :class:`OnnxSide` is the target side of
  :func:`weightport.checks.layer_check.check_layers`: each layer's node(s) and their constant inputs, cut
  out of the converted graph into a graph of their own (valid padding, no output padding, as the layer
  check asks) and run by onnxruntime on the canonical input (an RNN fed ``(seq, batch, features)`` unless
  its ``layout`` is 1, its ``Y`` given back batch-first with the directions side by side).
* **Whole graph**: onnxruntime runs the converted file on the recorded ``--input`` (its axes moved to the
  graph's input shape when the source's layout differs: channels last, or an RNN's sequence first), the
  output given back in the recorded layout and compared with ``--expected``.  Without a recorded pair the
  reference is the source run by its own framework on seeded random input, the one every target shares
  (:mod:`weightport.checks.source_reference`).

These are the runtime's half of the check; the validator that turns them into checks and a report is the
check layer's (:mod:`weightport.checks.targets.onnx`): nothing here imports it, by statement or by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from weightport.core.model import Layer, Model, is_bidirectional
from weightport.core.oracle import Refused
from weightport.core.shapes import flattened_map_shape
from weightport.formats.keras.target_check import (RuntimeSide, gate_swaps, said, spatial_mistakes,
                                                   swapped_blocks)

NODE_OPS = {"conv": ("Conv",), "depthwise": ("Conv",), "separable": ("Conv",), "conv_transpose": ("ConvTranspose",),
            "dense": ("Gemm", "MatMul"), "batchnorm": ("BatchNormalization",), "lstm": ("LSTM",), "gru": ("GRU",),
            "prelu": ("PRelu",), "embedding": ("Gather",)}
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,), "BatchNormalization": (1, 2, 3, 4),
                 "LSTM": (1, 2), "GRU": (1, 2), "PRelu": (1,), "Gather": (0,)}
GATES = {"LSTM": "iofc", "GRU": "zrh"}  # ONNX's gate blocks, in the order W, R and B hold them
SPATIAL_KINDS = ("conv", "depthwise", "separable", "conv_transpose")


def onnx_modules() -> tuple[Any, Any]:
    import onnx
    import onnxruntime
    return onnx, onnxruntime


def session(model_bytes: bytes | str) -> Any:
    _, onnxruntime = onnx_modules()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def np_type(ort_type: str) -> np.dtype:
    """numpy dtype of an onnxruntime type string (``tensor(float)``)."""
    names = {"float": np.float32, "double": np.float64, "float16": np.float16, "int64": np.int64, "int32": np.int32,
             "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
    return np.dtype(names.get(ort_type[len("tensor("):-1], np.float32))


# ------------------------------------------------------------------------------------------- the graph


class Graph:
    """The converted ONNX model as onnx loads it: its nodes, and every value computable from constants."""

    def __init__(self, path: str) -> None:
        onnx, _ = onnx_modules()
        self.onnx = onnx
        self.path = path
        self.model = onnx.load(path)  # tensors in an external data file are read from beside the model
        self.nodes = list(self.model.graph.node)
        self.initializers = {t.name: onnx.numpy_helper.to_array(t) for t in self.model.graph.initializer}
        self.producer = {name: node for node in self.nodes for name in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.values: dict[str, np.ndarray | None] = {}

    def opsets(self) -> list[Any]:
        return list(self.model.opset_import)

    def constant(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of ``name`` when it depends on constants only (an initializer, a Constant node, or a
        chain of nodes over them, evaluated by onnxruntime), else None."""
        if not name:
            return None
        if name in self.initializers:
            return self.initializers[name]
        if name in self.values:
            return self.values[name]
        self.values[name] = None  # a cycle or a graph input below: not constant
        node = self.producer.get(name)
        if node is None or depth > 64 or node.op_type in ("Shape", "Size", "RandomNormalLike", "RandomUniformLike"):
            return None
        inputs = {i: self.constant(i, depth + 1) for i in node.input if i}
        if any(value is None for value in inputs.values()):
            return None
        try:
            values = run_nodes(self.onnx, [node], inputs, {}, list(node.output), self.opsets())
        except Exception:  # onnxruntime cannot evaluate it alone: treat as computed, not constant
            return None
        for out, value in zip(node.output, values):
            self.values[out] = value
        return self.values[name]

    def weighted(self, node: Any) -> bool:
        """True when ``node`` is a layer node whose weight inputs are constants."""
        positions = WEIGHT_INPUTS.get(node.op_type)
        if positions is None or len(node.input) <= max(positions):
            return False
        if node.op_type == "Gather":
            data = self.constant(node.input[0])
            return data is not None and data.ndim == 2 and attribute(node, "axis", 0) == 0 \
                and self.constant(node.input[1]) is None
        return all(self.constant(node.input[k]) is not None for k in positions)

    def bias_add(self, node: Any) -> Any | None:
        """The ``Add`` after a ``MatMul`` that adds a constant (its bias), or None."""
        users = self.consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add":
            other = [name for name in users[0].input if name != node.output[0]]
            if len(other) == 1 and self.constant(other[0]) is not None:
                return users[0]
        return None


def attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper
    for item in node.attribute:
        if item.name == name:
            value = helper.get_attribute_value(item)
            return value.decode() if isinstance(value, bytes) else value
    return default


def run_nodes(onnx: Any, nodes: list[Any], constants: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
              outputs: list[str], opsets: list[Any]) -> list[np.ndarray]:
    """Run ``nodes`` alone in onnxruntime: ``constants`` as initializers, ``feeds`` as graph inputs."""
    helper = onnx.helper
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
              for name, value in feeds.items()]
    initializers = [onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)
                    for name, value in constants.items() if name not in feeds]
    graph = helper.make_graph(nodes, "cut", inputs, [helper.make_empty_tensor_value_info(name) for name in outputs],
                              initializers)
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return session(model.SerializeToString()).run(outputs, feeds)


# --------------------------------------------------------------------------------------- layers and nodes


def scope(node: Any) -> str:
    """The exporter scope a node's name gives (``/encoder/conv/Conv`` -> ``encoder/conv``), or ''."""
    parts = (node.name or "").strip("/").split("/")
    return "/".join(parts[:-1]) if len(parts) > 1 else ""


def belongs(node: Any, layer: Layer) -> bool:
    """True when the node's weights carry the layer's parameter names (``<layer>.<param>``, an RNN written
    anew ``<layer>.W``) or its exporter scope is the layer's (``/<layer>/Conv``; a separable conv's two
    nodes ``/<layer>/depthwise/Conv`` and ``/<layer>/pointwise/Conv``)."""
    names = {f"{layer.name}.{param}" for param in list(layer.tensors) + ["W", "R", "B"]}
    scopes = {layer.name, layer.name.replace(".", "/")}
    if layer.kind == "separable":
        scopes = {f"{base}/{part}" for base in scopes for part in ("depthwise", "pointwise")}
    return any(name in names for name in node.input) or scope(node) in scopes


def match_nodes(graph: Graph, layers: list[Layer]) -> dict[str, list[Any]]:
    """Each weighted layer's node(s) in the converted graph: by name first, then by position among the
    remaining weighted nodes of its kind (a separable conv takes two ``Conv`` nodes, a stacked torch RNN of
    ``num_layers`` layers one ``LSTM``/``GRU`` node per layer, as torch.onnx writes it)."""
    weighted = [node for node in graph.nodes if graph.weighted(node)]
    taken: set[int] = set()
    found: dict[str, list[Any]] = {}
    for by_name in (True, False):
        for layer in layers:
            if layer.name in found:
                continue
            count = 2 if layer.kind == "separable" else nodes_per_layer(layer)
            ops = NODE_OPS.get(layer.kind, ())
            free = [node for node in weighted if id(node) not in taken and node.op_type in ops
                    and (belongs(node, layer) or not by_name)]
            if len(free) >= count:
                found[layer.name] = free[:count]
                taken.update(id(node) for node in free[:count])
    return found


def nodes_per_layer(layer: Layer) -> int:
    """How many weighted nodes hold ``layer``'s weights: a stacked RNN's ``num_layers``, else one."""
    return int(layer.attrs.get("num_layers", 1) or 1) if layer.kind in ("lstm", "gru") else 1


@dataclass
class Bound:
    """A layer's node(s) cut out of the converted graph with their constant inputs."""

    nodes: list[Any]
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def weight(self, position: int = 1, node: int = 0) -> np.ndarray | None:
        names = self.nodes[node].input
        return self.constants.get(names[position]) if len(names) > position else None

    def replaced(self, position: int, value: np.ndarray, node: int = 0) -> Bound:
        return replace(self, constants={**self.constants, self.nodes[node].input[position]: value})


def bind(graph: Graph, nodes: list[Any]) -> Bound:
    bound = Bound(list(nodes))
    if nodes[0].op_type == "MatMul":
        add = graph.bias_add(nodes[0])
        if add is not None:
            bound.nodes.append(add)
    for node in bound.nodes:
        for name in node.input:
            value = graph.constant(name)
            if value is not None:
                bound.constants[name] = value
    return bound


def expected_shapes(layer: Layer, bound: Bound) -> list[tuple[str, tuple[int, ...] | None, tuple[int, ...]]]:
    """(what, shape in the graph, shape the source's tensors give) for each weight of the layer's node(s)."""
    t, op = layer.tensors, bound.nodes[0].op_type
    shape = (lambda v: None if v is None else tuple(v.shape))
    if layer.kind == "separable":
        return [("depthwise W", shape(bound.weight(1, 0)), tuple(t["depthwise.weight"].shape)),
                ("pointwise W", shape(bound.weight(1, 1)), tuple(t["pointwise.weight"].shape))]
    if op in ("Conv", "ConvTranspose", "Gather"):
        position = 0 if op == "Gather" else 1
        return [("weight", shape(bound.weight(position)), tuple(t["weight"].shape))]
    if op in ("Gemm", "MatMul"):
        out, features = (int(n) for n in t["weight"].shape)
        stored = (out, features) if op == "Gemm" and attribute(bound.nodes[0], "transB", 0) else (features, out)
        return [("weight", shape(bound.weight(1)), stored)]
    if op == "BatchNormalization":
        channels = (int(t["running_mean"].shape[0]),)
        return [(name, shape(bound.weight(k)), channels) for k, name in enumerate(("scale", "B", "mean", "var"), 1)]
    if op in ("LSTM", "GRU"):  # one node per stacked layer k, holding weight_ih_l{k} and weight_hh_l{k}
        directions = 2 if is_bidirectional(layer) else 1
        found = []
        for k in range(len(bound.nodes)):
            gates, features = (int(n) for n in t[f"weight_ih_l{k}"].shape)
            units = int(t[f"weight_hh_l{k}"].shape[1])
            found += [(f"W of layer {k}" if k else "W", shape(bound.weight(1, k)), (directions, gates, features)),
                      (f"R of layer {k}" if k else "R", shape(bound.weight(2, k)), (directions, gates, units))]
        return found
    if op == "PRelu":
        slope = bound.weight(1)
        size = int(np.prod(t["weight"].shape))
        return [("slope", None if slope is None else (slope.size,), (size,))]
    return []


# ------------------------------------------------------------------------------------------ the target side


def cut_attributes(node: Any, drop: tuple[str, ...], extra: dict[str, Any]) -> Any:
    """A copy of ``node`` without the attributes ``drop`` and with ``extra`` set."""
    from onnx import helper
    copy = helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name, domain=node.domain)
    copy.attribute.extend(a for a in node.attribute if a.name not in drop and a.name not in extra)
    copy.attribute.extend(helper.make_attribute(k, v) for k, v in extra.items())
    return copy


def valid(node: Any) -> Any:
    """A conv node with valid padding and no output padding (what the layer check computes): without
    ``pads``, ``auto_pad``, ``output_shape`` and ``output_padding`` ONNX pads nothing."""
    return cut_attributes(node, ("pads", "auto_pad", "output_shape", "output_padding"), {})


def run_bound(graph: Graph, layer: Layer, bound: Bound, x: np.ndarray) -> np.ndarray:
    """The layer's node(s) on canonical ``x``, by onnxruntime; the output canonical."""
    onnx, first = graph.onnx, bound.nodes[0]
    op = first.op_type
    weight = next((v for v in bound.constants.values() if v.dtype.kind == "f"), None)
    if x.dtype.kind == "f" and weight is not None:
        x = x.astype(weight.dtype)
    data = {"Gather": first.input[1]}.get(op, first.input[0])
    if op in ("Conv", "ConvTranspose"):
        nodes = [valid(node) for node in bound.nodes]
    elif op == "BatchNormalization":
        nodes = [cut_attributes(first, ("training_mode",), {})]
    elif op == "PRelu":
        slope = bound.weight(1)
        if slope.ndim == 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:  # (C,) broadcast per channel
            bound = bound.replaced(1, slope.reshape(slope.shape + (1,) * (x.ndim - 2)))
        nodes = [first]
    elif op in ("LSTM", "GRU"):
        return run_rnn(graph, layer, bound, x)
    else:
        nodes = bound.nodes
    if op == "Gather":
        x = x.astype(np.int64)
    constants = {k: v for k, v in bound.constants.items() if k != data}
    return run_nodes(onnx, nodes, constants, {data: x}, [nodes[-1].output[0]], graph.opsets())[0]


def run_rnn(graph: Graph, layer: Layer, bound: Bound, x: np.ndarray) -> np.ndarray:
    """An LSTM/GRU node alone (its initial states zero unless constant), fed batch-first ``x`` in its own
    layout; ``Y`` back batch-first with the directions concatenated, a backwards layer's steps in the order
    it read them (the layer check's convention)."""
    node = bound.nodes[0]
    batch_first = attribute(node, "layout", 0) == 1
    direction = attribute(node, "direction", "forward")
    if layer.attrs.get("go_backwards") and direction == "forward":
        x = x[:, ::-1]  # the graph reverses the sequence before a forward node: read it last to first here
    inputs = [name if k == 0 or name in bound.constants else "" for k, name in enumerate(node.input)]
    while inputs and inputs[-1] == "":
        inputs.pop()
    cut = cut_attributes(node, (), {})
    del cut.input[:]
    cut.input.extend(inputs)
    cut.output[:] = [node.output[0]] if node.output else ["y"]
    fed = np.ascontiguousarray(x if batch_first else np.swapaxes(x, 0, 1))
    constants = {k: v for k, v in bound.constants.items() if k in inputs}
    y = run_nodes(graph.onnx, [cut], constants, {inputs[0]: fed}, [cut.output[0]], graph.opsets())[0]
    if batch_first:  # Y: (batch, seq, directions, hidden)
        y = np.moveaxis(y, 0, 2)
    if layer.attrs.get("go_backwards") and direction == "reverse":
        y = y[::-1]
    y = np.concatenate(list(np.moveaxis(y, 1, 0)), axis=-1)  # (seq, batch, directions * hidden)
    return np.ascontiguousarray(np.swapaxes(y, 0, 1))


class OnnxSide(RuntimeSide):
    """onnxruntime running each layer's node(s) cut out of the converted graph."""

    runtime = "onnxruntime, its node cut out alone,"
    nothing_held = "the converted graph has no node holding its weights"

    def __init__(self, graph: Graph, source: Model, bound: dict[str, Bound], unavailable: dict[str, str]) -> None:
        super().__init__(unavailable)
        self.graph, self.source, self.bound = graph, source, bound

    def held(self, layer: Layer) -> Bound | None:
        return self.bound.get(layer.name)

    def run(self, layer: Layer, held: Bound, x: np.ndarray) -> np.ndarray:
        return run_bound(self.graph, layer, held, x)

    def mistakes(self, layer: Layer, held: Bound) -> list[tuple[str, Bound]]:
        return onnx_mistakes(layer, self.source, held)

    def holding(self, layer: Layer, held: Bound) -> OnnxSide:
        return OnnxSide(self.graph, self.source, {**self.bound, layer.name: held}, self.unavailable)

    def tensors(self, layer: Layer) -> dict[str, np.ndarray]:
        """The layer's kernel as the graph holds it (ONNX layouts are the canonical ones)."""
        bound = self.bound.get(layer.name)
        if bound is None or layer.kind not in SPATIAL_KINDS:
            return {}
        kernel = bound.weight(1, 0)
        return {} if kernel is None else {"weight": kernel, "depthwise.weight": kernel}


def onnx_mistakes(layer: Layer, source: Model, bound: Bound) -> list[tuple[str, Bound]]:
    """The layer's node weights with one classic mistake undone each, in ONNX's layouts."""
    op = bound.nodes[0].op_type
    found: list[tuple[str, Bound]] = []
    if layer.kind in SPATIAL_KINDS:
        kernel = bound.weight(1)
        found += [(mistake, bound.replaced(1, altered))
                  for mistake, altered in spatial_mistakes(kernel, tuple(range(2, kernel.ndim)))]
    if layer.kind == "dense":
        shape = flattened_map_shape(source, layer)
        kernel = bound.weight(1)
        if shape and kernel is not None:
            rows_last = op == "Gemm" and attribute(bound.nodes[0], "transB", 0)
            channels, *spatial = shape
            features = np.moveaxis(kernel, 1, 0) if rows_last else kernel  # (features, out)
            undone = np.moveaxis(features.reshape(*spatial, channels, -1), -2, 0).reshape(features.shape)
            found.append(("Dense rows not permuted after Flatten (C,H,W vs H,W,C order)",
                          bound.replaced(1, np.ascontiguousarray(np.moveaxis(undone, 0, 1) if rows_last else undone))))
    if op == "BatchNormalization":
        names = bound.nodes[0].input
        for mistake, a, b in (("gamma and beta swapped", 1, 2), ("running mean and variance swapped", 3, 4)):
            found.append((mistake, replace(bound, constants={**bound.constants, names[a]: bound.constants[names[b]],
                                                             names[b]: bound.constants[names[a]]})))
    if op in GATES:
        count = len(GATES[op])
        for mistake, i, j in gate_swaps(GATES[op]):
            changed = bound.replaced(1, swapped_blocks(bound.weight(1), count, i, j, axis=1))
            changed = changed.replaced(2, swapped_blocks(bound.weight(2), count, i, j, axis=1))
            bias = bound.weight(3)
            if bias is not None:  # B = [Wb, Rb]: the same blocks in both halves
                halves = [swapped_blocks(h, count, i, j, axis=1) for h in np.split(bias, 2, axis=1)]
                changed = changed.replaced(3, np.concatenate(halves, axis=1))
            found.append((mistake, changed))
    return found


# ---------------------------------------------------------------------------------------------- structure


@dataclass
class Matched:
    bound: dict[str, Bound]
    unavailable: dict[str, str]
    problems: list[str]


def match(graph: Graph, source: Model) -> Matched:
    """Every weighted source layer's node(s) and constant weights, checked against the source's shapes."""
    problems: list[str] = []
    try:
        graph.onnx.checker.check_model(graph.model)
    except Exception as error:
        problems.append(f"onnx.checker refuses the graph ({said(error)})")
    layers = source.weighted_layers()
    found = match_nodes(graph, layers)
    bound, unavailable = {}, {}
    for layer in layers:
        if layer.kind not in NODE_OPS:
            unavailable[layer.name] = f"no ONNX node kind is known for {layer.kind} layers"
            continue
        if layer.name not in found:
            problems.append(f"{layer.name}: no {' or '.join(NODE_OPS[layer.kind])} node with constant weights is "
                            "left for it")
            unavailable[layer.name] = "the converted graph has no node holding its weights"
            continue
        bound[layer.name] = bind(graph, found[layer.name])
        wrong = [f"{what} is {got} in the graph, the source's gives {want}"
                 for what, got, want in expected_shapes(layer, bound[layer.name]) if got != want]
        if wrong:
            problems.append(f"{layer.name} ({', '.join(n.name or n.op_type for n in found[layer.name])}): "
                            + "; ".join(wrong))
            unavailable[layer.name] = "its node's weights do not have the source's shapes"
    taken = {id(node) for nodes in found.values() for node in nodes}
    extra = [node.name or node.op_type for node in graph.nodes if graph.weighted(node) and id(node) not in taken
             and node.op_type != "Gather"]
    if extra:
        problems.append(f"weighted nodes no source layer matches: {', '.join(extra[:10])}")
    return Matched(bound, unavailable, problems)


# ------------------------------------------------------------------------------------------------ whole graph


def fits(shape: tuple[int, ...], declared: list[Any]) -> bool:
    return len(shape) == len(declared) and all(not isinstance(d, int) or d <= 0 or d == n
                                               for n, d in zip(shape, declared))


def layout_hint(source: Model) -> str:
    """How the source's own input differs from a canonical graph's: ``channels`` (channels last),
    ``sequence`` (an ONNX RNN's sequence-first input) or ``same``."""
    first = source.layers[0] if source.layers else None
    if first is not None and source.source.format == "onnx" and any(
            layer.kind in ("lstm", "gru") and first.name in layer.inputs for layer in source.layers):
        return "sequence"
    if source.source.details.get("data_format") == "channels_last" and any(
            layer.kind in SPATIAL_KINDS + ("pool", "global_pool") for layer in source.layers):
        return "channels"
    return "same"


def input_layouts(x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    found = [("same", x)]
    if x.ndim >= 3:
        found.append(("channels", np.moveaxis(x, -1, 1)))
    if x.ndim == 3:
        found.append(("sequence", np.swapaxes(x, 0, 1)))
    return found


def output_layouts(y: np.ndarray, how: str) -> list[tuple[str, np.ndarray]]:
    """The graph's output in the source's layout, for each way the input may have been moved."""
    found = [("same", y)]
    if y.ndim >= 3:
        found.append(("channels", np.moveaxis(y, 1, -1)))
    if y.ndim == 4:  # (batch, seq, directions, hidden) -> ONNX's Y (seq, directions, batch, hidden)
        found.append(("sequence", np.transpose(y, (1, 2, 0, 3))))
    if y.ndim == 3:
        found.append(("sequence", np.swapaxes(y, 0, 1)[:, np.newaxis]))
        found.append(("sequence", np.swapaxes(y, 0, 1)))
    return sorted(found, key=lambda item: item[0] != how)


def fitted_input(x: np.ndarray, declared: list[Any], hint: str) -> tuple[str, np.ndarray] | None:
    candidates = [(how, a) for how, a in input_layouts(x) if fits(a.shape, declared)]
    candidates.sort(key=lambda item: item[0] != hint)
    return candidates[0] if candidates else None


def run_several(run: Any, inputs: list[Any], xs: tuple[np.ndarray, ...]) -> np.ndarray:
    """A converted graph of several inputs run on one array per input, in order, each as given (an ONNX
    source's inputs are channels-first, as the converted graph's); its first output."""
    if len(inputs) != len(xs):
        raise Refused(f"the converted graph takes {len(inputs)} inputs, the source {len(xs)}")
    for declared, x in zip(inputs, xs):
        if not fits(x.shape, list(declared.shape)):
            raise Refused(f"the converted graph's input {declared.name!r} takes {list(declared.shape)}, the "
                          f"source's input is {tuple(x.shape)}")
    try:
        return run.run(None, {i.name: np.ascontiguousarray(x.astype(np_type(i.type))) for i, x in zip(inputs, xs)})[0]
    except Exception as error:
        raise Refused(f"onnxruntime cannot run the converted graph ({said(error)})") from None


def run_graph(path: str, source: Model, x: np.ndarray, expected_shape: tuple[int, ...]) -> np.ndarray:
    """The converted graph run whole by onnxruntime on ``x`` (the source's layout, its axes moved to the
    graph's input shape), the output given back in the source's layout (the one of ``expected_shape``).
    Refused when onnxruntime cannot load or run it or the input fits it in no layout; NotImplementedError when
    the graph takes several inputs."""
    try:
        run = session(path)
    except Exception as error:  # onnxruntime refuses the converted graph: a failure of the converted file
        raise Refused(f"onnxruntime cannot load the converted graph ({said(error)})") from None
    inputs = run.get_inputs()
    if isinstance(x, tuple):
        return run_several(run, inputs, x)
    if len(inputs) != 1:
        raise NotImplementedError(f"the converted graph takes {len(inputs)} inputs; the recorded input is one array")
    declared = list(inputs[0].shape)
    fitted = fitted_input(x, declared, layout_hint(source))
    if fitted is None:
        shown = "(" + ", ".join(str(d) if isinstance(d, int) else "N" for d in declared) + ")"
        raise Refused(f"the converted graph takes {shown}; the input {tuple(x.shape)} fits it neither as it is, nor "
                      "channels-first, nor batch-first")
    how, fed = fitted
    try:
        got = run.run(None, {inputs[0].name: np.ascontiguousarray(fed.astype(np_type(inputs[0].type)))})[0]
    except Exception as error:
        raise Refused(f"onnxruntime cannot run the converted graph ({said(error)})") from None
    return next((y for _, y in output_layouts(got, how) if y.shape == tuple(expected_shape)), got)
