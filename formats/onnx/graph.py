"""What real ONNX exporters write around the layers: biases in a separate node, constants that are no layer's
weights, ops weightport holds no layer kind for.  Used by :mod:`weightport.formats.onnx.reader`.

* **Bias in a separate node** (Paddle2ONNX ``Conv -> Add(Reshape(constant))``, ``ConvTranspose ->
  Add(constant)``, tf2onnx ``MatMul -> Add``): a constant that broadcasts along the layer's channel axis
  (``(C,)``, ``(1, C, 1, 1)``, ``(C, 1, 1)``, one value on a one-channel output, one value broadcast to every
  channel) is folded into the layer's ``bias``; the fold is recorded in the tensor's provenance (``explain``)
  and in the layer's ``folded_bias`` attr (the output's graph metadata).
* **Weightless ops** become ``onnx_op`` layers: ``attrs["op"]`` the ONNX op, ``attrs["onnx"]`` its attributes,
  ``attrs["operands"]`` one entry per ONNX input: ``{"input": k}`` (the k-th of ``layer.inputs``, a layer's
  output), ``{"literal": values, "dtype": name}`` (a small constant: integers or one value, written into the
  graph's structure), or None (an omitted optional input).  Their semantics are ONNX's own; the torch side
  runs them in :mod:`weightport.formats.torch.onnx_ops`.
* **Constants kept**: a float constant of more than one value that no layer converts becomes a ``constant``
  layer holding it as stored (tensor ``value``, a named buffer in the torch state_dict).
* **Accounting**: every initializer and Constant node of the source ends in exactly one of ``converted``
  (a layer tensor), ``folded`` (a bias fold, or into a constant computed at read time), ``structural``
  (a literal in a layer's attrs) or ``kept`` (a ``constant`` layer); :func:`accounting` lists them for
  ``explain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from weightport.core.describe import jsonable
from weightport.core.layout import Layout, NO_SEMANTICS
from weightport.core.model import Layer, Provenance, Tensor

RESHAPING = ("Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten")  # folded ops that only reshape values
KNOWN_OPS = frozenset((  # weightless ops the torch side runs with ONNX semantics (formats/torch/onnx_ops.py)
    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt", "Exp", "Log", "Abs", "Reciprocal", "Floor", "Ceil",
    "Clip", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Softmax", "Erf", "Gelu",
    "Elu", "Selu", "Softplus", "Softsign", "Identity", "Dropout", "Cast",
    "Concat", "Split", "Slice", "Gather", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand",
    "Resize", "Upsample", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "MatMul", "Shape", "ConstantOfShape",
    "Equal", "Where", "Min", "Max", "Less", "Greater", "Not",
))
LITERAL_MAX = 1 << 12  # values of an integer constant written into a layer's attrs
LITERAL_BUDGET = 1 << 20  # values written into attrs for a whole graph; past it, constants are kept instead


@dataclass(frozen=True)
class FoldBias:
    """A value step: a constant added after a Conv/ConvTranspose/MatMul, broadcast along its channel axis,
    becomes the layer's ``(C,)`` bias (one value broadcast to every channel)."""

    channels: int
    node: str
    stored: tuple[int, ...]

    def apply(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(array.reshape(-1), (self.channels,)))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.channels,)

    def inverse(self) -> "AsStored":
        return AsStored(self.stored, f"the Add node {self.node!r}")

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"fold the {list(self.stored)} constant of Add node {self.node!r} into the bias ({self.channels},)"


@dataclass(frozen=True)
class Reshaped:
    """A value step: a stored constant as a folded Reshape/Unsqueeze chain shapes it for its consumer."""

    target: tuple[int, ...]
    nodes: tuple[str, ...]
    stored: tuple[int, ...] = ()

    def apply(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.reshape(self.target))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.target

    def inverse(self) -> "AsStored":
        return AsStored(self.stored, ", ".join(self.nodes))

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"reshape to {list(self.target)} (folded {', '.join(self.nodes)})"


@dataclass(frozen=True)
class AsStored:
    """The inverse of a fold: a canonical tensor back in the stored constant's shape (a bias broadcast from
    one value gives that one value back)."""

    stored: tuple[int, ...]
    where: str

    def apply(self, array: np.ndarray) -> np.ndarray:
        size = int(np.prod(self.stored, dtype=np.int64))
        return np.ascontiguousarray(array.reshape(-1)[:size].reshape(self.stored))

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.stored

    def inverse(self) -> "AsStored":
        return self

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"back to the stored shape {list(self.stored)} ({self.where})"


def channel_bias(shape: tuple[int, ...], out_rank: int, channel_axis: int, channels: int) -> bool:
    """True when a constant of ``shape`` added to an output of rank ``out_rank`` (its channels on
    ``channel_axis``, counted from the end when negative) is one value per channel, or one value: every axis
    but the channel axis is 1 and the constant does not widen the output."""
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(shape) > out_rank or size not in (1, channels):
        return False
    from_end = out_rank - channel_axis if channel_axis >= 0 else -channel_axis
    return all(n == 1 for k, n in enumerate(reversed(shape), start=1) if k != from_end)


def origin(reader: Any, name: str) -> tuple[str, tuple[str, ...]]:
    """The source constant a value comes from through folded reshaping nodes, and those nodes' names."""
    nodes: list[str] = []
    name = reader.resolve(name)
    for _ in range(16):
        producer = reader.made_by.get(name)
        if name in reader.source_constants or producer is None or producer.op_type not in RESHAPING \
                or not producer.input or not reader.is_weight(producer.input[0]):
            break
        nodes.append(producer.name or producer.output[0])
        name = reader.resolve(producer.input[0])
    return name, tuple(nodes)


def fold_bias(reader: Any, node: Any, layer: Layer, skip: set[int], channel_axis: int, out_rank: int) -> None:
    """Fold ``node -> Add(constant)`` into ``layer``'s bias when the constant broadcasts on the channel axis."""
    consumers = reader.consumed_by.get(node.output[0], [])
    if "bias" in layer.tensors or len(consumers) != 1 or consumers[0][1].op_type != "Add" \
            or node.output[0] in reader.graph_outputs:
        return
    position, add = consumers[0]
    other = [name for name in add.input if name != node.output[0]]
    if len(other) != 1 or not reader.is_weight(other[0]):
        return
    operand = reader.tensors[reader.resolve(other[0])]
    shape = tuple(int(n) for n in operand.dims)
    channels = layer.tensors["weight"].shape[0] if channel_axis != 1 else layer.attrs["out_channels"]
    source, _ = origin(reader, other[0])
    proto = reader.tensors[source]
    stored, dtype = reader.checked(proto)
    if not channel_bias(shape, out_rank, channel_axis, channels) or dtype != layer.tensors["weight"].dtype:
        return
    label = add.name or add.output[0]
    rule = f"bias folded from Add node {label!r} ({reader.producer_name()} wrote the bias as a separate node)"
    layer.tensors["bias"] = Tensor("bias", stored, dtype, Layout("o"), Provenance(source, "as stored", NO_SEMANTICS, rule),
                                   reader.reader(proto, stored, dtype), (FoldBias(channels, label, stored),))
    layer.attrs["folded_bias"] = {"node": label, "constant": source, "shape": list(shape)}
    layer.attrs["_fused_until"] = add.output[0]
    reader.account(source, "folded", f"{layer.name}.bias")
    skip.add(position)


STRUCTURAL_INPUTS = {  # op -> input positions that configure it (sizes, scales, bounds), never data
    "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Clip": (1, 2), "Reshape": (1,), "Expand": (1,),
    "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ConstantOfShape": (0,), "Tile": (1,)}


def is_literal(array_shape: tuple[int, ...], dtype: np.dtype, op: str = "", position: int = 0) -> bool:
    """A constant written into the consuming layer's attrs: integers/booleans (shapes, axes, pads, indices)
    of at most :data:`LITERAL_MAX` values, a single value of any type (a scale, a clip bound), or what
    configures an op (Resize scales, Pad's value, ...: :data:`STRUCTURAL_INPUTS`)."""
    size = int(np.prod(array_shape, dtype=np.int64)) if array_shape else 1
    configures = position in STRUCTURAL_INPUTS.get(op, ())
    return size <= 1 or ((dtype.kind in "biu" or configures) and size <= LITERAL_MAX)


def op_layer(reader: Any, node: Any, model: Any, name: str) -> Layer:
    """An ``onnx_op`` layer for a weightless ONNX node: activations by reference, small constants as literals,
    other constants as ``constant`` layers added to ``model`` just before it."""
    layer = Layer(name, "onnx_op", {"op": node.op_type, "onnx": plain_attrs(reader, node),
                                    "opset": reader.opset}, source_class=node.op_type)
    if node.domain not in ("", "ai.onnx"):
        layer.attrs["domain"] = node.domain
    operands: list[Any] = []
    inputs: list[str] = []
    for position, value in enumerate(node.input):
        if not value:
            operands.append(None)
            continue
        if value in reader.producer:
            source = reader.producer[value]
        elif reader.is_weight(value):
            literal = reader.literal(value, layer.name, node.op_type, position)
            if literal is not None:
                operands.append(literal)
                continue
            source = reader.constant_layer(value, model)
        else:
            operands.append(None)
            continue
        if source not in inputs:
            inputs.append(source)
        operands.append({"input": inputs.index(source)})
    layer.attrs["operands"] = operands
    layer.inputs = inputs
    return layer


def plain_value(reader: Any, value: Any) -> Any:
    """An ONNX attribute value as JSON-ready data: strings decoded, a tensor as values with its dtype."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [plain_value(reader, item) for item in value]
    if hasattr(value, "dims") and hasattr(value, "data_type"):
        shape, dtype = reader.checked(value)
        if int(np.prod(shape, dtype=np.int64)) > LITERAL_MAX:  # a large tensor attribute: described, not copied
            return {"dtype": dtype.name, "shape": list(shape), "omitted": True}
        array = reader.numpy_helper.to_array(value)
        return {"values": array.reshape(-1).tolist(), "dtype": array.dtype.name, "shape": list(array.shape)}
    if hasattr(value, "node"):  # a subgraph (If, Loop): not run here
        return "<graph>"
    return jsonable(value)


def plain_attrs(reader: Any, node: Any) -> dict[str, Any]:
    return {name: plain_value(reader, value) for name, value in reader.attrs(node).items()}


def kept_layer(reader: Any, value: str, name: str) -> Layer:
    """A ``constant`` layer holding the constant ``value`` as stored (through folded reshapes, as its
    consumer sees it), under the tensor name ``value``."""
    source, nodes = origin(reader, value)
    proto = reader.tensors[source]
    stored, dtype = reader.checked(proto)
    seen = tuple(int(n) for n in reader.tensors[reader.resolve(value)].dims)
    steps = (Reshaped(seen, nodes, stored),) if nodes and seen != stored else ()
    pattern = " ".join(f"k{k}" for k in range(len(stored)))
    tensor = Tensor("value", stored, dtype, Layout(pattern if not steps else " ".join(f"k{k}" for k in range(len(seen)))),
                    Provenance(source, pattern or "scalar", NO_SEMANTICS, "a constant of the graph, kept as stored"),
                    reader.reader(proto, stored, dtype), steps)
    layer = Layer(name, "constant", {"shape": list(seen), "dtype": dtype.name, "source": source},
                  {"value": tensor}, [], "Constant")
    layer.output_shape = seen
    return layer


def accounting(reader: Any) -> dict[str, list[str]]:
    """Every source constant by how it reaches the output: ``{name: [how, where]}``."""
    return {name: list(reader.accounted.get(name, ("unaccounted", ""))) for name in reader.source_constants}
