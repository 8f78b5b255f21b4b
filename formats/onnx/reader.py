"""ONNX models: a graph-aware reader (a tensor's meaning comes from the node that consumes it).

Conv ``W`` (M, C/group, k...) and ConvTranspose ``W`` (C, M/group, k...) are already the canonical
layouts (correlation, like PyTorch). ``pads`` ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` become
per-axis pairs; ``auto_pad`` SAME_UPPER puts the odd pad at the end, SAME_LOWER at the start.
Gemm (``transB`` either way; ``alpha``/``beta`` folded exactly into weight/bias) and MatMul + Add
become dense layers; BatchNormalization keeps epsilon/momentum; LSTM (gates i,o,f,c, ``B`` = [Wb, Rb])
and GRU (z,r,h; ``linear_before_reset``) are reordered into PyTorch's gate order with ``_reverse``
tensors for a second direction. Weights may come from initializers, Constant nodes, or through
Identity / Cast chains.

External data (models over 2 GB) is read tensor by tensor with a memory map, never loading the whole
model, and only from files inside the model's folder: absolute locations, ``..``, control characters,
symlinks out of the folder and offsets or lengths beyond the file are refused.

Every tensor's declared shape is checked against the data it holds before it is used (no negative
dimension, raw bytes or values exactly as many as the shape needs), constant folding computes nothing
beyond :data:`weightport.core.budget.MAX_COMPUTED_BYTES` (each node's output size is worked out
before it is computed), and an empty file or a model without a graph is refused.  Reading is linear in
the nodes: producers, consumers and layer names are found in dictionaries.

onnx is imported only when an ONNX file is read.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightport.core.budget import check_computed_bytes, declared_elements, MAX_ITEMS
from weightport.core.dtypes import is_bfloat16
from weightport.core.errors import (BadInputError, MissingDependencyError, UnsafeInputError, UnsupportedError, WeightportError)
from weightport.core.layout import CORRELATION, Layout, NO_SEMANTICS
from weightport.core.layout import CANONICAL_PATTERNS, conv_role
from weightport.core.steps import Relayout, ReorderBlocks, TakeIndex
from weightport.core.model import Layer, Model, Provenance, SourceInfo, Tensor
from weightport.core.options import ReadOptions
from weightport.core.shapes import infer_shapes
from weightport.formats.onnx import control_flow, graph as exported

NAME = "onnx"
DESCRIPTION = "ONNX models (initializers, Constant nodes, external data)"
EXTENSIONS = (".onnx",)

ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax", "Elu": "elu",
               "Selu": "selu", "Softplus": "softplus", "Softsign": "softsign"}  # HardSigmoid: alpha, beta (onnx_op)
PASS_THROUGH = ("Identity", "Dropout")
OPERAND_OPS = ("Add", "Mul", "Concat")  # with a constant operand, these run with ONNX semantics (onnx_op)
COMPARISONS = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Not")  # If conditions
FOLDABLE = ("ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast", "Squeeze", "Unsqueeze",
            "Gather", "Add", "Sub", "Mul", "Div", "Range", "Expand") + COMPARISONS
MAX_FOLDED = 1 << 16  # values in a foldable constant: shape arithmetic, never weights
MAX_RANK = 32         # axes of one tensor (NumPy's own limit before 2.0)
SAME_NAME_UNDERSCORES = 8  # a repeated layer name gets _, __, ... up to this many, then _9, _10, ...
PACKED_4BIT = ("INT4", "UINT4", "FLOAT4E2M1")  # two values a byte


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", "onnx", "Reading ONNX models") from None
    return onnx


def sniff(path: str) -> bool:
    """A cheap look: the .onnx extension and a protobuf that starts with a ModelProto field."""
    if not path.lower().endswith(".onnx"):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(1)
    except OSError:
        return False
    return head in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32", b"\x3a", b"\x42")


@dataclass(frozen=True)
class Scale:
    """A value step: multiply by a constant (Gemm's alpha and beta, folded exactly)."""

    factor: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        return (array * np.asarray(self.factor, dtype=array.dtype)).astype(array.dtype)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> "Scale":
        return Scale(1.0 / self.factor)

    def is_identity(self) -> bool:
        return self.factor == 1.0

    def describe(self) -> str:
        return f"scale by {self.factor:g} (Gemm alpha/beta)"


def safe_name(name: str) -> str:
    """A layer name usable as a torch module path: dots kept (nested modules), other symbols replaced."""
    cleaned = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip(".") or "node"
    return ".".join(part if part and not part[0].isdigit() or part.isdigit() else f"_{part}"
                    for part in cleaned.split("."))


INFERENCE_BYTES = 4096  # initializers up to this size keep their values for shape inference


class OnnxReader:
    """One reading of one ONNX file."""

    def __init__(self, path: str, options: ReadOptions) -> None:
        self.path = path
        self.options = options
        self.folder = os.path.dirname(os.path.abspath(path))
        self.onnx = import_onnx()
        from onnx import numpy_helper
        self.numpy_helper = numpy_helper
        if os.path.getsize(path) == 0:
            raise BadInputError("the ONNX file is empty (0 bytes)", path=path,
                                fix="Check the file was copied completely")
        try:
            self.proto = self.onnx.load_model(path, load_external_data=False)
        except Exception as error:  # protobuf's DecodeError and friends
            raise BadInputError(f"not a readable ONNX model ({type(error).__name__})", path=path,
                                fix="Check the file is a complete .onnx model") from None
        if not self.proto.HasField("graph") or not (self.proto.graph.node or self.proto.graph.initializer):
            raise BadInputError("not an ONNX model: it holds no graph (no nodes, no weights)", path=path,
                                fix="Check the file is a complete .onnx model")
        items = len(self.proto.graph.node) + len(self.proto.graph.initializer)
        if items > MAX_ITEMS:
            raise BadInputError(f"the ONNX graph holds {items} nodes and weights (more than {MAX_ITEMS})", path=path,
                                fix="The model is damaged or crafted; export it again")
        self.untaken: dict[str, str] = {}  # constants of an If branch that never runs -> why (control_flow)
        self.index()
        for _ in range(control_flow.MAX_INLINED):
            if not control_flow.inline_constant_ifs(self):
                break
            self.index()

    def index(self) -> None:
        """Index the graph: its constants, producers and consumers, folded shape arithmetic, value shapes."""
        try:
            self.inferred = self.onnx.shape_inference.infer_shapes(self.without_weights(), strict_mode=False)
        except Exception:
            self.inferred = self.proto
        graph = self.proto.graph
        self.tensors: dict[str, Any] = {t.name: t for t in graph.initializer}
        self.source_constants: list[str] = [t.name for t in graph.initializer] + [
            node.output[0] for node in graph.node if node.op_type == "Constant" and node.output]
        self.accounted: dict[str, tuple[str, str]] = {}  # source constant -> (how, where) it reaches the output
        self.in_subgraphs: dict[str, list[str]] = {}  # control-flow node -> the constants inside its subgraphs
        for node in graph.node:
            for name, proto in control_flow.subgraph_constants(self.onnx, node):
                self.tensors.setdefault(name, proto)
                self.source_constants.append(name)
                self.in_subgraphs.setdefault(node.name or node.output[0], []).append(name)
        for name, why in self.untaken.items():
            if name not in self.source_constants:
                self.source_constants.append(name)
            self.accounted[name] = ("folded", why)
        self.graph_outputs = {output.name for output in graph.output}
        self.graph_inputs = {value.name for value in graph.input}
        self.kept: dict[str, str] = {}
        self.secondary: set[str] = set()
        self.literal_values = 0  # values written into layer attrs so far (bounded by LITERAL_BUDGET)  # constant -> the ``constant`` layer keeping it
        self.aliases: dict[str, str] = {}
        self.consumed_by: dict[str, list[tuple[int, Any]]] = {}  # value -> (position, node) of its consumers
        self.made_by: dict[str, Any] = {}  # value -> the first node producing it
        for position, node in enumerate(graph.node):
            for name in node.input:
                self.consumed_by.setdefault(name, []).append((position, node))
            for name in node.output:
                self.made_by.setdefault(name, node)
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.tensors[node.output[0]] = attribute.t
            elif node.op_type in ("Identity", "Cast") and node.input and (node.input[0] in self.tensors
                                                                            or node.input[0] in self.aliases):
                self.aliases[node.output[0]] = node.input[0]
        self.folded = self.fold_constants(graph)
        self.shapes = self.value_shapes()
        self.producer: dict[str, str] = {}

    def without_weights(self) -> Any:
        """The model for shape inference: every initializer holding more than :data:`INFERENCE_BYTES` becomes
        a graph input of its type and shape (inference reads the values of small constants only, such as
        a Reshape's target shape), so inference does not copy the weights (a model's size in memory)."""
        source, light = self.proto, self.onnx.ModelProto()
        light.ir_version = source.ir_version
        light.opset_import.extend(source.opset_import)
        light.functions.extend(source.functions)
        graph = light.graph
        graph.name = source.graph.name
        for field in ("node", "input", "output", "value_info"):
            getattr(graph, field).extend(getattr(source.graph, field))
        inputs = {value.name for value in source.graph.input}
        for tensor in source.graph.initializer:
            if tensor.ByteSize() <= INFERENCE_BYTES:
                graph.initializer.append(tensor)
            elif tensor.name not in inputs:
                graph.input.append(self.onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                           list(tensor.dims)))
        return light

    def fold_constants(self, graph: Any) -> set[int]:
        """Compute the small shape subgraphs exporters leave behind (torch.onnx's ``F.pad`` emits
        ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Cast for its pads) with onnx's own
        reference kernels, so the ops they feed (Pad, Reshape) see constants.  Only nodes of
        :data:`FOLDABLE` whose inputs are all Constant-node outputs of at most :data:`MAX_FOLDED` values are
        computed; initializers (the weights) are never touched.  Each node's output size is worked out
        from its inputs *before* it is computed, and what all of them compute together stays under
        :data:`~weightport.core.budget.MAX_COMPUTED_BYTES` (a few bytes of constants can declare gigabytes).
        Returns the folded nodes."""
        from onnx.reference import ReferenceEvaluator
        known: dict[str, np.ndarray] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] in self.tensors:
                proto = self.tensors[node.output[0]]
                shape, dtype = self.checked(proto)
                if proto.data_location != self.onnx.TensorProto.EXTERNAL and dtype.kind in "biuf" and \
                        declared_elements(shape, self.path, "") <= MAX_FOLDED:
                    known[node.output[0]] = self.array(proto)
        folded: set[int] = set()
        computed = 0
        for index, node in enumerate(graph.node):
            inputs = [name for name in node.input if name]
            if node.op_type not in FOLDABLE or not inputs or not all(name in known for name in inputs):
                continue
            values = [known[name] for name in inputs]
            estimate = folded_bytes(node.op_type, values, self.attrs(node))
            if estimate is None:  # onnx could not compute it either: the node stays in the graph
                continue
            what = f"constant folding up to node {node.name or node.output[0]!r} ({node.op_type})"
            computed += estimate
            check_computed_bytes(computed, self.path, what)
            try:
                outputs = ReferenceEvaluator(node).run(None, dict(zip(inputs, values)))
            except Exception:  # a node onnx cannot compute stays in the graph as it was
                continue
            outputs = [np.asarray(value) for value in outputs]
            computed += max(sum(value.nbytes for value in outputs) - estimate, 0)
            check_computed_bytes(computed, self.path, what)
            for name, value in zip(node.output, outputs):
                if value.size <= MAX_FOLDED and value.dtype.kind in "biuf":
                    known[name] = value
                self.tensors[name] = self.numpy_helper.from_array(value, name)
            folded.add(index)
        return folded

    def weight_names(self) -> set[str]:
        return set(self.tensors) | set(self.aliases)

    def value_shapes(self) -> dict[str, tuple[int | None, ...]]:
        shapes: dict[str, tuple[int | None, ...]] = {}
        graph = self.inferred.graph
        for info in list(graph.input) + list(graph.value_info) + list(graph.output):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        return shapes

    # -- tensors -----------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        seen = 0
        while name in self.aliases and seen < 64:
            name, seen = self.aliases[name], seen + 1
        return name

    def is_weight(self, name: str) -> bool:
        return bool(name) and self.resolve(name) in self.tensors

    def tensor(self, param: str, name: str, src: str, dst: str, after: tuple = (), semantics: str = NO_SEMANTICS,
               before: tuple = ()) -> Tensor:
        """A lazy canonical tensor over the ONNX tensor ``name``: ``before`` steps (taking one direction of a
        stacked RNN tensor), the relayout ``src`` -> ``dst``, then ``after`` steps (gate reorder, scaling)."""
        proto = self.tensors[self.resolve(name)]
        shape, dtype = self.checked(proto)
        if dtype.kind not in "biufc" and not is_bfloat16(dtype):
            raise UnsupportedError(f"tensor {proto.name!r} holds {dtype} values, not numbers", path=self.path,
                                   fix="Only numeric weights can be converted")
        target = CORRELATION if semantics != NO_SEMANTICS else NO_SEMANTICS
        relayout = Relayout(Layout(src, semantics), Layout(dst, target))
        rule = "ONNX Conv/ConvTranspose compute cross-correlation" if semantics != NO_SEMANTICS else None
        return Tensor(param, shape, dtype, Layout(dst, target), Provenance(name, src, semantics, rule),
                      self.reader(proto, shape, dtype), tuple(before) + (relayout,) + tuple(after))

    def proto_dtype(self, proto: Any) -> np.dtype:
        """NumPy dtype of a TensorProto's values (bfloat16 from ml_dtypes, as onnx maps it)."""
        try:
            return np.dtype(self.onnx.helper.tensor_dtype_to_np_dtype(proto.data_type))
        except (KeyError, ValueError, TypeError):
            raise BadInputError(f"tensor {proto.name!r} has an unknown data type ({proto.data_type})", path=self.path,
                                fix="The model is damaged or crafted; export it again") from None

    def checked(self, proto: Any) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype of a TensorProto once its declaration is checked against the data it holds:
        no negative dimension, and exactly the bytes (``raw_data``) or values (``float_data``, ...) the shape
        needs.  External data is checked against its file when it is located (:meth:`external_location`)."""
        what = f"tensor {proto.name!r}"
        shape = tuple(int(d) for d in proto.dims)
        if len(shape) > MAX_RANK:
            raise BadInputError(f"{what} has {len(shape)} dimensions", path=self.path,
                                fix="The model is damaged or crafted; export it again")
        count = declared_elements(shape, self.path, what)
        dtype = self.proto_dtype(proto)
        if proto.data_location == self.onnx.TensorProto.EXTERNAL:
            return shape, dtype
        packed = proto.data_type in {getattr(self.onnx.TensorProto, name, -1) for name in PACKED_4BIT}
        if proto.HasField("raw_data"):
            held, needed, unit = len(proto.raw_data), (count + 1) // 2 if packed else count * dtype.itemsize, "bytes"
        else:
            field = self.onnx.helper.tensor_dtype_to_field(proto.data_type)
            held, unit = len(getattr(proto, field)), f"{field} values"
            needed = (count + 1) // 2 if packed else count * (2 if dtype.kind == "c" else 1)
        if held != needed:
            raise BadInputError(f"{what} holds {held} {unit} but its shape {list(shape)} needs {needed}",
                                path=self.path, fix="The model is damaged or crafted; export it again")
        return shape, dtype

    def array(self, proto: Any) -> np.ndarray:
        """The values of a checked TensorProto (external data read from the model's folder only)."""
        shape, dtype = self.checked(proto)
        return np.asarray(self.reader(proto, shape, dtype)())

    def reader(self, proto: Any, shape: tuple[int, ...], dtype: np.dtype):
        if proto.data_location == self.onnx.TensorProto.EXTERNAL:
            location, offset, length = self.external_location(proto, shape, dtype)
            def read_external() -> np.ndarray:
                if not shape or math.prod(shape) == 0:
                    return np.zeros(shape, dtype)
                return np.memmap(location, dtype=dtype, mode="r", offset=offset, shape=shape)
            return read_external
        def read_inline() -> np.ndarray:
            try:
                return self.numpy_helper.to_array(proto)
            except (ValueError, TypeError, KeyError) as error:
                raise BadInputError(f"tensor {proto.name!r} cannot be decoded ({type(error).__name__})",
                                    path=self.path, fix="The model is damaged; export it again") from None
        return read_inline

    def external_location(self, proto: Any, shape: tuple[int, ...], dtype: np.dtype) -> tuple[str, int, int]:
        """(file, offset, length) of an external tensor, confined to the model's folder."""
        entries = {item.key: item.value for item in proto.external_data}
        location = entries.get("location", "")
        if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/") \
                or any(ord(char) < 32 or ord(char) == 127 for char in location):
            raise UnsafeInputError(f"external data location {location!r} of tensor {proto.name!r} is not a plain "
                                   "name inside the model's folder", path=self.path,
                                   fix="Keep external data files beside the model, named relatively")
        full = os.path.realpath(os.path.join(self.folder, location))
        if os.path.commonpath([full, os.path.realpath(self.folder)]) != os.path.realpath(self.folder):
            raise UnsafeInputError(f"external data of tensor {proto.name!r} resolves outside the model's folder "
                                   "(a symlink?)", path=self.path, fix="Copy the data file into the model's folder")
        if not os.path.isfile(full):
            raise BadInputError(f"external data file {location!r} of tensor {proto.name!r} is missing", path=self.path,
                                fix="Put the data file beside the model")
        expected = math.prod(shape) * dtype.itemsize
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries.get("length", expected))
        except ValueError:
            raise BadInputError(f"external data of tensor {proto.name!r} has a bad offset or length", path=self.path,
                                fix="The model is damaged") from None
        if offset < 0 or length != expected or offset + length > os.path.getsize(full):
            raise BadInputError(f"external data of tensor {proto.name!r} (offset {offset}, length {length}) does "
                                f"not fit {location!r} or its {expected}-byte shape", path=self.path,
                                fix="The model or its data file is damaged or truncated")
        return full, offset, length

    # -- graph --------------------------------------------------------------------------------------
    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def layer_name(self, node: Any, weight: str | None = None) -> str:
        """A weighted node is named after its weight (``conv1.weight`` -> ``conv1``) or, when the exporter
        renamed the weight (``onnx::LSTM_45``), after its torch.onnx scope (``/encoder/lstm/LSTM`` ->
        ``encoder.lstm``); any other node after its own name."""
        if weight and weight.endswith(".weight"):
            return safe_name(weight[: -len(".weight")])
        scope = re.fullmatch(r"/(.+)/[A-Za-z]+(_\d+)?", node.name or "")
        if weight and scope:
            return safe_name(scope.group(1).replace("/", "."))
        return safe_name(node.name or node.output[0])

    def model(self) -> Model:
        graph = self.proto.graph
        opset = max((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
        model = Model(SourceInfo(self.path, NAME, f"opset {opset}" if opset else None, "onnx",
                                 {"data_format": "channels_first", "producer": self.proto.producer_name}))
        model.has_architecture = True
        self.opset = opset or 1
        inputs = [i for i in graph.input if i.name not in self.tensors]
        self.names: set[str] = set()
        self.next_suffix: dict[str, int] = {}
        sequence_first = {node.input[0] for node in graph.node if node.op_type in ("LSTM", "GRU")}
        states = {name for node in graph.node if node.op_type in ("LSTM", "GRU") for name in node.input[5:7]}
        for graph_input in inputs:
            shape = self.shapes.get(graph_input.name, ())
            state = graph_input.name in states and len(shape) == 3  # (directions, batch, hidden)
            attrs: dict = {"batch_axis": 1} if state else {}
            batch = self.fixed_batch(shape, 1 if state or graph_input.name in sequence_first else 0)
            if batch:
                attrs["fixed_batch"] = batch
            layer = Layer(safe_name(graph_input.name), "input", attrs, {}, [],
                          "graph input", None,
                          (shape[0], shape[2]) if state else self.per_sample_shape(shape, graph_input.name in sequence_first))
            model.layers.append(layer)
            self.names.add(layer.name)
            self.producer[graph_input.name] = layer.name
        skip: set[int] = set()
        self.zero_states = self.zero_initial_states(graph, skip)
        self.current = model
        for index, node in enumerate(graph.node):
            if index in skip or index in self.folded or node.op_type == "Constant" or (node.op_type in ("Identity", "Cast") and
                                                               node.output[0] in self.aliases):
                continue
            layer = self.layer(node, graph.node, index, skip)
            if layer.kind == "onnx_op" and len([o for o in node.output if o]) > 1 and node.op_type == "Split":
                self.split_outputs(node, layer, model)
                continue
            if layer.kind != "onnx_op":
                layer.inputs = [self.producer[n] for n in node.input if n in self.producer]
            layer.name = self.unique_name(layer.name)
            self.account_node(node, layer)
            model.layers.append(layer)
            output = layer.attrs.pop("_fused_until", None) or node.output[0]
            self.producer[output] = layer.name
            if layer.kind in ("lstm", "gru"):
                self.state_outputs(node, layer, model)
            for extra in node.output:
                if extra != output and extra not in self.producer:
                    self.secondary.add(extra)  # an output no layer computes
                self.producer.setdefault(extra, layer.name)
        self.keep_the_rest(model)
        self.keep_subgraph_constants(model)
        model.source.details["constants"] = exported.accounting(self)
        model.source.details["inputs"] = {i.name: self.producer[i.name] for i in inputs}
        model.source.details["outputs"] = {output.name: self.producer[output.name] for output in graph.output
                                           if output.name in self.producer and output.name not in self.secondary}
        infer_shapes(model)
        return model

    def zero_initial_states(self, graph: Any, skip: set[int]) -> set[str]:
        """An LSTM/GRU's initial state that is zeros: a zero constant, or ``Expand`` of one to the batch's size
        (torch.onnx writes that for an RNN called without a state).  It is the RNN's own default: the value is
        not fed, such an Expand node is skipped, and its constant is accounted for as folded into the RNN."""
        positions = {id(node): index for index, node in enumerate(graph.node)}
        zeros: set[str] = set()
        for node in graph.node:
            if node.op_type not in ("LSTM", "GRU"):
                continue
            for value in node.input[5:7]:
                producer = self.made_by.get(value)
                expanded = producer is not None and producer.op_type == "Expand" and \
                    len(self.consumed_by.get(value, [])) == 1 and value not in self.graph_outputs
                source = producer.input[0] if expanded else value
                if not value or not self.is_weight(source) or np.any(self.array(self.tensors[self.resolve(source)])):
                    continue
                zeros.add(value)
                if expanded:
                    skip.add(positions[id(producer)])
                where = f"{self.layer_name(node, node.input[1])}: a zero initial state, the RNN's default"
                self.account(exported.origin(self, source)[0], "folded", where)
        return zeros

    def state_outputs(self, node: Any, layer: Layer, model: Model) -> None:
        """An LSTM/GRU's final states ``Y_h`` (and an LSTM's ``Y_c``), used downstream or as graph outputs, as
        ``rnn_state`` layers: output ``output_index`` (1: ``Y_h``, 2: ``Y_c``) of the recurrent layer, in ONNX's
        (directions, batch, hidden) layout, which is torch's ``h_n``/``c_n`` layout too."""
        for index, value in enumerate(node.output[1:3], start=1):
            if value and (value in self.graph_outputs or value in self.consumed_by):
                state = Layer(self.unique_name(f"{layer.name}.{'Y_h' if index == 1 else 'Y_c'}"), "rnn_state",
                              {"output_of": layer.name, "output_index": index}, {}, [layer.name], node.op_type)
                model.layers.append(state)
                self.producer[value] = state.name

    def split_outputs(self, node: Any, layer: Layer, model: Model) -> None:
        """A Split node as one ``onnx_op`` layer per output (each computes its own part)."""
        base = layer.name
        self.account_node(node, layer)
        for k, output in enumerate(node.output):
            part = Layer(self.unique_name(f"{base}_{k}" if k else base), "onnx_op",
                         {**layer.attrs, "output_index": k, "outputs": len(node.output)}, {}, list(layer.inputs),
                         layer.source_class)
            model.layers.append(part)
            self.producer[output] = part.name

    # -- constants: every one accounted for -----------------------------------------------------------
    def account(self, name: str, how: str, where: str) -> None:
        if name in self.source_constants and name not in self.accounted:
            self.accounted[name] = (how, where)

    def producer_name(self) -> str:
        return self.proto.producer_name or "the exporter"

    def account_node(self, node: Any, layer: Layer) -> None:
        """Record how the constants ``node`` reads reach the output: as ``layer``'s tensors (converted), or,
        for a layer that holds none of them, written into its attrs (structural)."""
        for tensor in layer.tensors.values():
            self.account(tensor.provenance.source_key, "converted", f"{layer.name}.{tensor.name}")
        for value in node.input:
            if value and self.is_weight(value):
                self.account(exported.origin(self, value)[0], "structural", layer.name)

    def literal(self, value: str, layer: str, op: str = "", position: int = 0) -> dict[str, Any] | None:
        """A small constant operand as ``{"literal": values, "dtype": name}``, or None when it is kept."""
        proto = self.tensors[self.resolve(value)]
        shape, dtype = self.checked(proto)
        if dtype.kind not in "biuf" and not is_bfloat16(dtype):
            raise UnsupportedError(f"constant {proto.name!r} holds {dtype} values, not numbers", path=self.path,
                                   fix="Only numeric constants can be converted")
        if not exported.is_literal(shape, dtype, op, position) or is_bfloat16(dtype) or \
                self.literal_values + math.prod(shape) > exported.LITERAL_BUDGET:
            return None
        self.literal_values += math.prod(shape)
        self.account(exported.origin(self, value)[0], "structural", layer)
        array = self.array(proto)
        return {"literal": array.tolist(), "dtype": dtype.name, "shape": list(array.shape)}

    def constant_layer(self, value: str, model: Model) -> str:
        """The ``constant`` layer keeping ``value`` (made, just before its first consumer, on first use)."""
        key = self.resolve(value)
        if key not in self.kept:
            layer = exported.kept_layer(self, value, self.unique_name(safe_name(key)))
            model.layers.append(layer)
            self.kept[key] = layer.name
            self.account(layer.tensors["value"].provenance.source_key, "kept", f"{layer.name}.value")
        return self.kept[key]

    def keep_the_rest(self, model: Model) -> None:
        """Constants read by a folded node are folded; any other constant no layer took is kept as stored,
        in a ``constant`` layer placed before the graph's last layer (which stays its output)."""
        for index in sorted(self.folded):
            node = self.proto.graph.node[index]
            for value in node.input:
                if value and self.is_weight(value):
                    self.account(exported.origin(self, value)[0], "folded",
                                 f"constant computed at read time by node {node.name or node.output[0]!r}")
        rest = [name for name in self.source_constants if name not in self.accounted]
        last = model.layers.pop() if len(model.layers) > 1 else None
        for name in rest:
            proto = self.tensors[name]
            if self.proto_dtype(proto).kind not in "biuf":
                self.account(name, "structural", "not a number: no layer reads it")
                continue
            self.constant_layer(name, model)
        if last is not None:
            model.layers.append(last)

    def keep_subgraph_constants(self, model: Model) -> None:
        """Say which constants inside If/Loop/Scan subgraphs were kept as stored (the subgraphs are not run
        here); ``--strict`` refuses them."""
        for node, names in self.in_subgraphs.items():
            kept = [self.accounted[name][1] for name in names if self.accounted.get(name, ("",))[0] == "kept"]
            what = f"node {node!r} runs subgraphs (If/Loop/Scan) weightport does not convert"
            if self.options.strict:
                raise UnsupportedError(f"{what}; they hold {len(names)} constants", path=self.path,
                                       fix="Export with the control flow traced out (torch.onnx: trace, not script), "
                                           "or drop {opt:strict} to keep them as stored, with a warning")
            model.warn(f"{what}: its {len(names)} constants are kept as stored"
                       + (": " + ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
                          if kept else ""))

    def unique_name(self, name: str) -> str:
        """``name``, or when a layer has it already ``name_``, ``name__``, ... (then ``name_9``, ...), in O(1)
        amortized: each name remembers the next suffix to try."""
        if name in self.names:
            base, tried = name, self.next_suffix.get(name, 1)
            while name in self.names:
                name = base + "_" * tried if tried <= SAME_NAME_UNDERSCORES else f"{base}_{tried}"
                tried += 1
            self.next_suffix[base] = tried
        self.names.add(name)
        return name

    @staticmethod
    def fixed_batch(shape: tuple[int, ...], axis: int) -> int | None:
        """The batch size a graph input is exported with (torch.onnx without dynamic axes, Paddle2ONNX's
        detectors), or None where the batch axis is free."""
        if len(shape) <= axis or not isinstance(shape[axis], int) or shape[axis] <= 0:
            return None
        return int(shape[axis])

    @staticmethod
    def per_sample_shape(shape: tuple[int, ...], sequence_first: bool) -> tuple[int, ...] | None:
        """One sample's shape in the canonical (batch-first) model: ``shape[1:]`` for an (N, ...) input;
        ``(seq, features)`` for an input read by an ONNX LSTM/GRU, which is (seq, batch, features)."""
        if not shape:
            return None
        if sequence_first and len(shape) == 3:
            return (shape[0], shape[2])
        return tuple(shape[1:])

    def layer(self, node: Any, nodes: Any, index: int, skip: set[int]) -> Layer:
        op, a = node.op_type, self.attrs(node)
        if op in ("Conv", "ConvTranspose"):
            layer = self.conv(node, a)
            exported.fold_bias(self, node, layer, skip, 1, layer.attrs["rank"] + 2)
            return layer
        if op == "Gemm":
            return self.gemm(node, a)
        if op == "MatMul" and self.is_weight(node.input[1]):
            return self.matmul(node, nodes, index, skip)
        if op == "BatchNormalization":
            return self.batchnorm(node, a)
        if op in ("LSTM", "GRU"):
            return self.rnn(node, a)
        slope = self.slope_source(node, nodes) if op == "PRelu" else ""
        if self.is_weight(slope):
            layer = Layer(self.layer_name(node, slope), "prelu", {}, source_class="PRelu")
            dims = self.tensors[self.resolve(slope)].dims
            per_channel = all(size == 1 for size in dims[1:])  # (C, 1, 1) -> torch.nn.PReLU's (C,)
            pattern = " ".join(["c"] + ["1" if per_channel else f"x{k}" for k in range(len(dims) - 1)])
            layer.tensors["weight"] = self.tensor("weight", slope, pattern, "c" if per_channel else pattern)
            return layer
        if op == "Gather" and self.is_parameter(node.input[0]) and a.get("axis", 0) == 0 \
                and len(self.tensors[self.resolve(node.input[0])].dims) == 2:
            layer = Layer(self.layer_name(node, node.input[0]), "embedding", {}, source_class="Gather")
            layer.tensors["weight"] = self.tensor("weight", node.input[0], "n e", "n e")
            return layer
        if op == "Softmax" and len(self.shapes.get(node.input[0]) or ()) != 2:
            return self.op_layer(node)  # over ONNX's axis (the canonical softmax takes the channel axis)
        if op in ACTIVATIONS:
            return Layer(self.layer_name(node), "activation", {"activation": ACTIVATIONS[op]}, source_class=op)
        if self.feeds_only_prelu_slopes(node):  # PRelu reads the slope itself (slope_source)
            return Layer(self.layer_name(node), "other", {"op": op}, source_class=op)
        if not all(name in self.producer for name in node.input if name) and op in OPERAND_OPS:
            return self.op_layer(node)
        if op == "Flatten" and a.get("axis", 1) == 1:
            return Layer(self.layer_name(node), "flatten", {"flatten_order": "chw"}, source_class=op)
        if op == "Reshape" and self.is_flatten_reshape(node):
            return Layer(self.layer_name(node), "flatten", {"flatten_order": "chw"}, source_class=op)
        if op in ("MaxPool", "AveragePool") and not self.pool_needs_onnx(a):
            return self.pool(node, a)
        pads = self.zero_spatial_pads(node, a) if op == "Pad" else None
        if pads is not None:
            return Layer(self.layer_name(node), "padding", {"pads": pads, "rank": len(pads)}, source_class=op)
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            return Layer(self.layer_name(node), "global_pool",
                         {"mode": "max" if "Max" in op else "avg", "keepdims": True}, source_class=op)
        if op == "Add":
            return Layer(self.layer_name(node), "add", {}, source_class=op)
        if op == "Mul":
            return Layer(self.layer_name(node), "multiply", {}, source_class=op)
        if op == "Concat" and a.get("axis", 1) == 0:  # on ONNX's first axis (stacked RNN states): ONNX's own Concat
            return self.op_layer(node)
        if op == "Concat":
            axis = a.get("axis", 1)
            return Layer(self.layer_name(node), "concat", {"axis": axis - 1 if axis > 0 else axis}, source_class=op)
        if op in PASS_THROUGH:
            return Layer(self.layer_name(node), "dropout", {}, source_class=op)
        return self.op_layer(node)

    def op_layer(self, node: Any) -> Layer:
        """An ``onnx_op`` layer (ONNX semantics, run by the torch side); an op weightport does not know that
        reads a float constant has its tensors kept as stored, with a warning (``--strict``: refused)."""
        layer = exported.op_layer(self, node, self.current, self.layer_name(node))
        known = node.domain in ("", "ai.onnx") and node.op_type in exported.KNOWN_OPS
        kept = [self.kept[self.resolve(n)] for n in node.input if n and self.resolve(n) in self.kept]
        if not known and kept:
            what = f"node {node.name or node.output[0]!r} ({node.domain + '.' if node.domain else ''}{node.op_type})"
            if self.options.strict:
                raise UnsupportedError(f"{what} holds weights weightport does not understand", path=self.path,
                                       fix="Drop {opt:strict} to keep them as stored (named buffers), with a warning")
            self.current.warn(f"{what} is an op weightport does not understand; its tensors are kept as stored: "
                              + ", ".join(f"{name}.value" for name in kept))
        return layer

    def feeds_only_prelu_slopes(self, node: Any) -> bool:
        """An Unsqueeze/Reshape of a learned constant whose only consumers are PRelu slopes."""
        consumers = self.consumed_by.get(node.output[0], []) if node.output else []
        return node.op_type in ("Unsqueeze", "Reshape") and self.is_parameter(node.input[0]) and bool(consumers) \
            and all(c.op_type == "PRelu" and c.input[1:2] == [node.output[0]] for _, c in consumers)

    @staticmethod
    def pool_needs_onnx(a: dict[str, Any]) -> bool:
        """ceil_mode, or an average that counts padding: run with ONNX semantics, not as a pool layer."""
        return bool(a.get("ceil_mode")) or bool(a.get("count_include_pad")) or a.get("auto_pad", b"NOTSET") not in (
            b"NOTSET", "NOTSET", b"VALID", "VALID", b"", "")

    def zero_spatial_pads(self, node: Any, a: dict[str, Any]) -> list[list[int]] | None:
        """``[[before, after], ...]`` per spatial axis of a constant-zero Pad of N, C, spatial... with nothing
        added to N or C; None for any other Pad (reflect, non-zero value, pads not constant)."""
        names = list(node.input[1:]) + [""] * 3
        if a.get("mode", b"constant") not in (b"constant", "constant") or not self.is_weight(names[0]):
            return None
        pads = [int(p) for p in self.array(self.tensors[self.resolve(names[0])]).reshape(-1)]
        value = self.array(self.tensors[self.resolve(names[1])]) if self.is_weight(names[1]) else 0
        half = len(pads) // 2
        if names[2] or np.any(np.asarray(value) != 0) or half < 3 or any(pads[:2]) or any(pads[half:half + 2]):
            return None
        return [[pads[k], pads[half + k]] for k in range(2, half)]

    def slope_source(self, node: Any, nodes: Any) -> str:
        """PRelu's slope, followed back through the Unsqueeze/Reshape torch.onnx puts on a per-channel
        ``(C,)`` weight to broadcast it as ``(C, 1, 1)``; the weight is read as stored."""
        name = node.input[1]
        for _ in range(4):
            producer = self.made_by.get(name)
            if producer is None or producer.op_type not in ("Unsqueeze", "Reshape") or \
                    not self.is_parameter(producer.input[0]):
                break
            name = producer.input[0]
        return name

    def is_parameter(self, name: str) -> bool:
        """A constant that looks like learned weights (float, more than one value), not an index or a scalar."""
        if not self.is_weight(name):
            return False
        proto = self.tensors[self.resolve(name)]
        dtype = self.proto_dtype(proto)
        return (dtype.kind == "f" or is_bfloat16(dtype)) and math.prod(proto.dims) > 1

    def is_flatten_reshape(self, node: Any) -> bool:
        out = self.shapes.get(node.output[0])
        return out is not None and len(out) == 2

    def conv(self, node: Any, a: dict[str, Any]) -> Layer:
        if not self.is_weight(node.input[1]):
            raise UnsupportedError(f"{node.op_type} {node.name!r} takes its weights from a graph input",
                                   path=self.path, fix="Store the weights as initializers")
        proto = self.tensors[self.resolve(node.input[1])]
        dims = [int(d) for d in proto.dims]
        rank = len(dims) - 2
        kind = "conv" if node.op_type == "Conv" else "conv_transpose"
        role = conv_role(kind, rank)
        layer = Layer(self.layer_name(node, node.input[1]), kind, {}, source_class=node.op_type,
                      semantics_rule="onnx-correlation")
        layer.tensors["weight"] = self.tensor("weight", node.input[1], CANONICAL_PATTERNS[role],
                                              CANONICAL_PATTERNS[role], semantics=CORRELATION)
        if len(node.input) > 2 and node.input[2]:
            layer.tensors["bias"] = self.tensor("bias", node.input[2], "o", "o")
        group = int(a.get("group", 1))
        kernel = tuple(int(k) for k in a.get("kernel_shape", dims[2:]))
        strides = tuple(a.get("strides", (1,) * rank))
        dilations = tuple(a.get("dilations", (1,) * rank))
        pads = self.pads(node, a, kernel, strides, dilations, kind)
        if kind == "conv":
            in_channels, out_channels = dims[1] * group, dims[0]
        else:
            in_channels, out_channels = dims[0], dims[1] * group
            if a.get("output_shape"):
                raise UnsupportedError(f"ConvTranspose {node.name!r} gives output_shape instead of pads",
                                       path=self.path, fix="Export it with explicit pads")
        layer.attrs = {"rank": rank, "kernel_size": kernel, "strides": strides, "dilations": dilations,
                       "padding": pads, "pads": pads, "groups": group, "in_channels": in_channels,
                       "out_channels": out_channels, "data_format": "channels_first"}
        if kind == "conv_transpose":
            layer.attrs["output_padding"] = tuple(a.get("output_padding", (0,) * rank))
        return layer

    def pads(self, node: Any, a: dict[str, Any], kernel: tuple[int, ...], strides: tuple[int, ...],
             dilations: tuple[int, ...], kind: str = "conv") -> list[list[int]]:
        rank = len(kernel)
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            flat = list(a.get("pads", [0] * 2 * rank))
            return [[int(flat[k]), int(flat[k + rank])] for k in range(rank)]
        if auto == "VALID":
            return [[0, 0] for _ in range(rank)]
        shape = self.shapes.get(node.input[0])
        if kind != "conv" or shape is None or any(n is None for n in shape[2:]):
            raise UnsupportedError(f"{node.op_type} {node.name!r} uses auto_pad {auto} with unknown input size",
                                   path=self.path, fix="Export with explicit pads or static input shapes")
        pairs = []
        for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pairs.append([small, large] if auto == "SAME_UPPER" else [large, small])
        return pairs

    def pool(self, node: Any, a: dict[str, Any]) -> Layer:
        kernel = tuple(int(k) for k in a["kernel_shape"])
        strides = tuple(a.get("strides", (1,) * len(kernel)))
        pads = self.pads(node, a, kernel, strides, (1,) * len(kernel))
        padded = any(p for pair in pads for p in pair)
        if a.get("ceil_mode") or (node.op_type == "AveragePool" and a.get("count_include_pad") and padded):
            raise UnsupportedError(f"{node.op_type} {node.name!r} uses ceil_mode or count_include_pad",
                                   path=self.path, fix="Export without them")
        return Layer(self.layer_name(node), "pool", {"rank": len(kernel), "kernel_size": kernel, "strides": strides,
                                                     "padding": pads, "pads": pads,
                                                     "mode": "max" if node.op_type == "MaxPool" else "avg"},
                     source_class=node.op_type)

    def gemm(self, node: Any, a: dict[str, Any]) -> Layer:
        if a.get("transA", 0):
            raise UnsupportedError(f"Gemm {node.name!r} with transA=1", path=self.path,
                                   fix="Only Gemm(x, W) with x as the first input is a dense layer")
        if not self.is_weight(node.input[1]):
            raise UnsupportedError(f"Gemm {node.name!r} takes its weights from a graph input", path=self.path,
                                   fix="Store the weights as initializers")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        layer = Layer(self.layer_name(node, node.input[1]), "dense", {}, source_class="Gemm")
        src = "o i" if a.get("transB", 0) else "i o"
        layer.tensors["weight"] = self.tensor("weight", node.input[1], src, "o i",
                                              (Scale(alpha),) if alpha != 1.0 else ())
        if len(node.input) > 2 and node.input[2]:
            bias_proto = self.tensors.get(self.resolve(node.input[2]))
            if bias_proto is None or len(bias_proto.dims) != 1:
                raise UnsupportedError(f"Gemm {node.name!r} has a bias that is not a 1-D constant", path=self.path,
                                       fix="Export the bias as a 1-D initializer")
            layer.tensors["bias"] = self.tensor("bias", node.input[2], "o", "o", (Scale(beta),) if beta != 1.0 else ())
        layer.attrs = {"units": layer.tensors["weight"].shape[0],
                       "onnx_gemm": {"alpha": alpha, "beta": beta, "transB": int(a.get("transB", 0))}}
        return layer

    def matmul(self, node: Any, nodes: Any, index: int, skip: set[int]) -> Layer:
        layer = Layer(self.layer_name(node, node.input[1]), "dense", {}, source_class="MatMul")
        layer.tensors["weight"] = self.tensor("weight", node.input[1], "i o", "o i")
        out_rank = len(self.shapes.get(node.output[0], ())) or 2
        exported.fold_bias(self, node, layer, skip, -1, out_rank)
        if "bias" in layer.tensors:
            layer.source_class = "MatMul+Add"
        layer.attrs["units"] = layer.tensors["weight"].shape[0]
        return layer

    def batchnorm(self, node: Any, a: dict[str, Any]) -> Layer:
        layer = Layer(self.layer_name(node, node.input[1]), "batchnorm", {}, source_class="BatchNormalization")
        for param, name in zip(("weight", "bias", "running_mean", "running_var"), node.input[1:5]):
            if not self.is_weight(name):
                raise UnsupportedError(f"BatchNormalization {node.name!r} takes {param} from a graph input",
                                       path=self.path, fix="Store it as an initializer")
            layer.tensors[param] = self.tensor(param, name, "o", "o")
        layer.attrs = {"epsilon": float(a.get("epsilon", 1e-5)), "momentum": float(a.get("momentum", 0.9)),
                       "num_features": layer.tensors["running_mean"].shape[0]}
        return layer

    def rnn(self, node: Any, a: dict[str, Any]) -> Layer:
        """ONNX LSTM (gates i,o,f,c) / GRU (z,r,h) -> PyTorch gate order, one set per direction."""
        op = node.op_type
        kind = op.lower()
        if len(node.input) > 7 and node.input[7] and op == "LSTM":
            raise UnsupportedError(f"LSTM {node.name!r} has peephole weights P, which torch.nn.LSTM lacks",
                                   path=self.path, fix="Export an LSTM without peepholes")
        if a.get("activations") or a.get("clip") or a.get("input_forget"):
            raise UnsupportedError(f"{op} {node.name!r} uses non-default activations, clip or input_forget",
                                   path=self.path, fix="Only the default ONNX activations map to PyTorch")
        if a.get("layout", 0):
            raise UnsupportedError(f"{op} {node.name!r} uses layout=1", path=self.path, fix="Export with layout=0")
        gates, canonical = ("iofc", "ifco") if op == "LSTM" else ("zrh", "rzh")
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        directions = 2 if direction == "bidirectional" else 1
        layer = Layer(self.layer_name(node, node.input[1]), kind, {}, source_class=op)
        reorder = ReorderBlocks(0, gates, canonical)
        for d, suffix in enumerate(("", "_reverse")[:directions]):
            take = TakeIndex(d, directions)
            for param, name in ((f"weight_ih_l0{suffix}", node.input[1]), (f"weight_hh_l0{suffix}", node.input[2])):
                layer.tensors[param] = self.tensor(param, name, "o i", "o i", (reorder,), before=(take,))
            if len(node.input) > 3 and node.input[3]:
                halves = Relayout(Layout("(s o)"), Layout("s o"), (("s", 2),))  # B = [Wb, Rb]
                for half, param in enumerate(("bias_ih_l0", "bias_hh_l0")):
                    layer.tensors[param + suffix] = self.tensor(param + suffix, node.input[3], "o", "o", (reorder,),
                                                                before=(take, halves, TakeIndex(half, 2)))
        if len(node.input) > 4 and node.input[4]:
            raise UnsupportedError(f"{op} {node.name!r} takes sequence_lens (a length per sample), which "
                                   f"torch.nn.{op} has no input for", path=self.path,
                                   fix="Export the RNN without per-sample lengths (pad the batch to one length)")
        present = []
        for state, value in zip(("h", "c"), node.input[5:7]):  # initial_h, initial_c
            if not value or value in self.zero_states:
                continue
            if value not in self.producer and self.is_weight(value):
                self.producer[value] = self.constant_layer(value, self.current)  # stored: kept, fed as the state
            present.append(state)
        if present:
            layer.attrs["initial_state"] = present
        hidden = int(a.get("hidden_size", layer.tensors["weight_hh_l0"].shape[1]))
        layer.attrs = {"units": hidden, "return_sequences": True, "go_backwards": direction == "reverse",
                       "bidirectional": directions == 2, "merge_mode": "onnx",
                       "reset_after": bool(a.get("linear_before_reset", 0)) if op == "GRU" else True,
                       "activation": "tanh", "recurrent_activation": "sigmoid", **layer.attrs}
        if node.input[0] not in self.graph_inputs:  # fed by another op: ONNX's (seq, batch, features) in the graph
            layer.attrs["sequence_first"] = True
        return layer


def read(path: str, options: ReadOptions) -> Model:
    """Read an ONNX model into the canonical model (tensors stay in the file until loaded)."""
    try:
        return OnnxReader(path, options).model()
    except WeightportError as error:
        raise error.with_path(path)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as error:
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise BadInputError(f"ONNX graph not understood ({type(error).__name__}: {first})", path=path,
                            fix="The model is damaged or uses a construct weightport does not read") from None


def broadcast_elements(shapes: list[tuple[int, ...]]) -> int | None:
    """Elements of the NumPy broadcast of ``shapes``; None when they do not broadcast or a size is negative."""
    rank = max((len(shape) for shape in shapes), default=0)
    result = []
    for axis in range(1, rank + 1):
        sizes = {shape[-axis] for shape in shapes if len(shape) >= axis} - {1}
        if len(sizes) > 1 or any(size < 0 for size in sizes):
            return None
        result.append(sizes.pop() if sizes else 1)
    return declared_elements(result, "", "")  # no negative size: never raises


def folded_bytes(op: str, values: list[np.ndarray], attrs: dict[str, Any]) -> int | None:
    """The bytes a foldable node would compute from constant ``values``, worked out without computing it
    (an upper bound: 8 bytes a value when the output type is not an input's); None when onnx could not
    compute the node either (bad shapes, negative sizes, a zero Range step)."""
    if op in ("Cast", "ConstantOfShape"):
        itemsize = 8
    elif op in ("Add", "Sub", "Mul", "Div", "Concat", "Range") + COMPARISONS:
        itemsize = max(value.dtype.itemsize for value in values)
    else:  # the data's own type (the other inputs are shapes, axes or indices)
        itemsize = values[0].dtype.itemsize
    sizes = [value.size for value in values]
    count: int | None
    if op in ("Add", "Sub", "Mul", "Div") + COMPARISONS:
        count = broadcast_elements([value.shape for value in values])
    elif op in ("Expand", "ConstantOfShape"):
        if len(values) != (2 if op == "Expand" else 1) or values[-1].ndim != 1 or values[-1].dtype.kind not in "iu":
            return None
        dims = tuple(int(n) for n in values[-1])
        if op == "Expand":
            count = broadcast_elements([values[0].shape, dims])
        else:
            count = None if any(n < 0 for n in dims) else declared_elements(dims, "", "")
    elif op == "Range":
        if len(values) != 3 or any(size != 1 for size in sizes):
            return None
        start, limit, delta = (float(value.reshape(-1)[0]) for value in values)
        if not all(math.isfinite(v) for v in (start, limit, delta)) or delta == 0:
            return None
        count = max(math.ceil((limit - start) / delta), 0)
    elif op == "Concat":
        count = sum(sizes)
    elif op == "Gather":
        data = values[0]
        axis = int(attrs.get("axis", 0))
        if len(values) != 2 or not -data.ndim <= axis < data.ndim:
            return None
        count = data.size // max(data.shape[axis], 1) * values[1].size
    else:  # Reshape, Slice, Transpose, Cast, Squeeze, Unsqueeze: never more values than their data
        count = max(sizes)
    return None if count is None else count * itemsize
