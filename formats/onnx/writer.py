"""ONNX output (``--to onnx``): the source's weights written into a copy of a ``--template`` model of
the same architecture, or a whole graph traced from the canonical PyTorch module.

ONNX layouts are the canonical ones and ONNX correlates, so kernels are neither transposed nor
flipped on the way out; a template's own storage (Gemm ``transB=0``, ``alpha``/``beta``, LSTM gate
order, stacked directions) is restored by inverting the steps its reader applies
(:func:`weightport.core.steps.write_back`).  :func:`onnx_plan` is what ``weightport explain --to
onnx`` prints and what the writer writes.  onnx (and, for a traced graph, torch) are imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import secrets
import shutil
import threading
import warnings
from typing import Any

import numpy as np

from weightport.core.atomic import atomic_path, check_can_write, check_free_space, fsync_folder, staging_folder
from weightport.core.dtypes import is_bfloat16
from weightport.core.errors import BadInputError, MissingDependencyError, UnsupportedError, UsageError
from weightport.core.layout import CORRELATION, Layout
from weightport.core.model import Layer, Model
from weightport.core.options import ReadOptions, WriteOptions
from weightport.core.plan import Plan, PlannedTensor, canonical_plan, torch_rnn_problem
from weightport.core.progress import Progress
from weightport.core.rules import hard_sigmoid_coefficients
from weightport.core.steps import Relayout, ReorderBlocks, TakeIndex, write_back
from weightport.core.streaming import write_bytes, write_planned
from weightport.formats.onnx.reader import OnnxReader, import_onnx
from weightport.formats.torch.arch import ARCHITECTURE_LESS, canonical_layouts, user_module
from weightport.formats.torch.arch_onnx import graph_note

def onnx_plan(model: Model, options: WriteOptions) -> Plan:
    """What the ONNX target writes.

    Without a template: the canonical plan (the traced graph's initializers are the canonical
    tensors as they are), except for the LSTM/GRU layers torch.nn cannot compute, whose ONNX ``W``,
    ``R``, ``B`` are planned here (:func:`rnn_plan`).  With ``options.template``: one entry per weight
    slot of the template, keyed by the template's initializer name (``NAME[i]`` for one of a stacked array's parts, as
    ONNX's LSTM ``B = [Wb, Rb]``), with the inverse of the steps the ONNX reader applies to it.
    """
    if not options.template and user_module(model) is not None:
        plan = canonical_plan(model, options, "onnx")
        plan.notes.append(graph_note(model))
        return plan
    if not options.template:
        return traced_plan(model, options)
    reader = OnnxReader(options.template, ReadOptions())
    return template_plan(model, reader, matched_layers(model, reader.model(), options.template))


def template_plan(model: Model, reader: OnnxReader, pairs: list[tuple[Layer, Layer]]) -> Plan:
    """The template's weight slots, each with the source tensor written into it and the steps on the way."""
    planned = []
    for source_layer, template_layer in pairs:
        for param, slot in template_layer.tensors.items():
            takes = [k for k, step in enumerate(slot.transforms) if isinstance(step, TakeIndex)]
            after = slot.transforms[takes[-1] + 1:] if takes else slot.transforms  # the part's own steps
            key = reader.resolve(slot.provenance.source_key) + "".join(
                f"[{slot.transforms[k].index}]" for k in takes)
            steps = tuple(step.inverse() for step in reversed(after))
            layout = next((step.dst for step in reversed(steps) if hasattr(step, "dst")), slot.layout)
            planned.append(PlannedTensor(key, source_layer, param, source_layer.tensors[param], steps, layout))
    return Plan("onnx", planned, list(model.warnings))


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write ``model`` as ONNX: into a copy of ``options.template`` (its initializers and Constant weights
    replaced), or, without a template, as a whole graph traced from the canonical PyTorch module.

    ONNX layouts are the canonical ones and ONNX correlates, so kernels are neither transposed nor
    flipped on the way out; a template's own storage (Gemm ``transB=0``, ``alpha``/``beta``, LSTM gate
    order, stacked directions) is restored by inverting the steps its reader would apply.
    The output passes ``onnx.checker``; ``weightport validate`` runs it in onnxruntime.
    """
    onnx = import_onnx()
    if options.target_semantics not in (None, CORRELATION):
        raise UsageError("ONNX Conv computes cross-correlation; its kernels cannot be stored for convolution",
                         fix="Drop {opt:target_semantics} for {opt:to=onnx}")
    if options.template:
        reader = OnnxReader(options.template, ReadOptions())
        pairs = matched_layers(model, reader.model(), options.template)
        plan = template_plan(model, reader, pairs)
        if streams(reader, plan):  # tensor by tensor into a data file: memory bounded by the largest tensor
            write_streamed(onnx, reader, pairs, plan, path, options)
            return plan.warnings
        proto = template_with_weights(reader, pairs)
    else:
        plan = traced_plan(model, options)
        proto = traced_graph(model, plan)
    if proto.ByteSize() > EXTERNAL_THRESHOLD:  # over protobuf's 2 GB: tensors go to a data file beside it
        write_with_external_data(onnx, proto, path, options.force)
        return plan.warnings
    with atomic_path(path, options.force) as temporary:
        onnx.save_model(proto, temporary)
        check_written(onnx, temporary, path)
    return plan.warnings


def companion_outputs(path: str) -> list[str]:
    """The tensor file a model over 2 GB is written with (another name when it replaces a previous pair)."""
    return [path + ".data"]


def check_written(onnx: Any, written: str, path: str) -> None:
    try:
        onnx.checker.check_model(written)
    except onnx.checker.ValidationError as error:
        raise BadInputError(f"the written ONNX model fails onnx.checker ({str(error).splitlines()[0]})",
                            path=path, fix="Report this with the source file") from None


def write_with_external_data(onnx: Any, proto: Any, path: str, force: bool) -> None:
    """The model and its tensor file written together into a staging folder, then put in place.

    The data file goes in first under a name nothing uses (``NAME.onnx.data``, or
    ``NAME.onnx.<random>.data`` when a previous pair is being replaced); the model's rename is the one
    step that switches from the previous pair to the new one, so a kill at any moment leaves the
    previous pair whole (or no output).  The previous pair's data file is removed after the switch.
    """
    folder, name, data_name, previous = external_names(onnx, path, force)
    staging = staging_folder(path)
    try:
        staged = os.path.join(staging, name)
        onnx.save_model(proto, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=EXTERNAL_TENSOR_BYTES)
        install_pair(onnx, staging, name, data_name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_previous(folder, previous, data_name)


def external_names(onnx: Any, path: str, force: bool) -> tuple[str, str, str, list[str]]:
    """(folder, model name, data file name, the replaced pair's data files) of a model written with external
    data: ``NAME.onnx.data``, or ``NAME.onnx.<random>.data`` when that name is taken by the pair being replaced."""
    check_can_write(path, force)
    folder, name = os.path.split(os.path.abspath(path))
    previous = weightport_data_files(onnx, path)
    data_name = f"{name}.data"
    if os.path.lexists(os.path.join(folder, data_name)):
        check_can_write(os.path.join(folder, data_name), force)
        data_name = f"{name}.{secrets.token_hex(4)}.data"
    return folder, name, data_name, previous


def install_pair(onnx: Any, staging: str, name: str, data_name: str, path: str) -> None:
    """Check the staged model, fsync it and its data file, move the data file in, then the model (the switch)."""
    folder = os.path.dirname(os.path.abspath(path))
    staged = os.path.join(staging, name)
    check_written(onnx, staged, path)
    written = [each for each in (data_name, name) if os.path.exists(os.path.join(staging, each))]
    for each in written:
        with open(os.path.join(staging, each), "rb+") as handle:
            os.fsync(handle.fileno())
    if data_name in written:
        os.replace(os.path.join(staging, data_name), os.path.join(folder, data_name))
    os.replace(staged, path)
    fsync_folder(folder)


def remove_previous(folder: str, previous: list[str], data_name: str) -> None:
    """After the switch: the replaced pair's data files (those weightport named), never the new one."""
    for old in previous:
        if old != data_name:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, old))


def streams(reader: OnnxReader, plan: Plan) -> bool:
    """Whether a template's weights are written tensor by tensor into a data file: when the template keeps
    its own weights in external data (the output does as its template does), or the weights pass 2 GB."""
    external = reader.onnx.TensorProto.EXTERNAL
    return (any(t.data_location == external for t in reader.proto.graph.initializer)
            or sum(item.nbytes for item in plan.tensors) > EXTERNAL_THRESHOLD)


DATA_ALIGNMENT = 64  # each tensor's offset in the data file (a cache line; what onnx's own writer aligns to)


def write_streamed(onnx: Any, reader: OnnxReader, pairs: list[tuple[Layer, Layer]], plan: Plan, path: str,
                   options: WriteOptions) -> None:
    """The template with its initializers moved to a data file that is written tensor by tensor.

    Each planned tensor streams from the source (a memory map where the reader can) through the block
    engine into ``NAME.onnx.data`` at a 64-byte aligned offset, and its TensorProto in the template becomes
    a reference (``location``, ``offset``, ``length``); a template tensor that no source tensor replaces
    is copied from the template's own data file the same way.  Parts of a stacked array (an LSTM's
    ``B = [Wb, Rb]``) and Constant-node weights are small and are built whole, as the in-memory path does.
    Model and data file are staged together and moved into place as :func:`write_with_external_data` does;
    memory is bounded by the largest tensor, not the model.
    """
    parts = {item.key.split("[", 1)[0] for item in plan.tensors if "[" in item.key}
    whole = template_with_weights(reader, pairs, only=parts) if parts else {}
    planned = {item.key: item for item in plan.tensors if "[" not in item.key}
    initializers = {t.name for t in reader.proto.graph.initializer}
    for name, item in planned.items():  # a constant's value stays inside its node: built whole
        if name not in initializers:
            whole[name] = item.load()
    jobs: list[tuple[Any, int, Any]] = []  # (TensorProto, bytes, what fills it: a PlannedTensor or an array's reader)
    for proto in reader.proto.graph.initializer:
        if proto.name in planned:
            check_slot(reader, proto, planned[proto.name])
            jobs.append((proto, planned[proto.name].nbytes, planned[proto.name]))
        elif proto.name in whole:
            jobs.append((proto, whole[proto.name].nbytes, lambda value=whole[proto.name]: value))
        elif proto.data_location == onnx.TensorProto.EXTERNAL:  # kept from the template: mapped when written
            shape, dtype = reader.checked(proto)
            jobs.append((proto, math.prod(shape) * dtype.itemsize, reader.reader(proto, shape, dtype)))
    for name, value in whole.items():
        if name not in initializers:
            reader.tensors[name].CopyFrom(reader.numpy_helper.from_array(value, reader.tensors[name].name))
    total = sum(nbytes for _, nbytes, _ in jobs)
    check_free_space(path, total + DATA_ALIGNMENT * len(jobs) + reader.proto.ByteSize())
    folder, name, data_name, previous = external_names(onnx, path, options.force)
    staging = staging_folder(path)
    try:
        with open(os.path.join(staging, data_name), "wb") as data, \
                Progress(f"writing {os.path.basename(path)}", total, options.quiet) as progress:
            for proto, _, job in jobs:
                data.write(b"\0" * (-data.tell() % DATA_ALIGNMENT))
                offset = data.tell()
                if isinstance(job, PlannedTensor):
                    length = write_planned(data, job, progress)
                else:  # one array at a time: a memory map of the template is released once written
                    array = np.asarray(job())
                    length = write_bytes(data, np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)))
                    progress.advance(proto.name, length)
                    del array
                refer_to(onnx, proto, data_name, offset, length)
        onnx.save_model(reader.proto, os.path.join(staging, name))
        install_pair(onnx, staging, name, data_name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_previous(folder, previous, data_name)


def check_slot(reader: OnnxReader, proto: Any, item: PlannedTensor) -> None:
    """A planned tensor must have its template slot's dtype (weightport never casts) and shape."""
    shape, dtype = reader.checked(proto)
    if np.dtype(item.dtype) != dtype:
        raise UsageError(f"{proto.name} is {dtype} in the template, {np.dtype(item.dtype)} in the source; weightport "
                         "never casts silently", path=reader.path, fix="Use a template exported in the source's dtype")
    if tuple(item.shape) != shape:
        raise UsageError(f"{proto.name} is {list(shape)} in the template, {list(item.shape)} from the source",
                         path=reader.path, fix="Use a template of the same architecture")


def refer_to(onnx: Any, proto: Any, location: str, offset: int, length: int) -> None:
    """Make ``proto`` a reference to ``length`` bytes at ``offset`` of ``location`` (its values dropped)."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        proto.ClearField(field)
    del proto.external_data[:]
    proto.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value


def weightport_data_files(onnx: Any, path: str) -> list[str]:
    """Data files that the ONNX model at ``path`` (being replaced) names and weightport would have named."""
    if not os.path.isfile(path):
        return []
    pattern = re.compile(re.escape(os.path.basename(path)) + r"(\.[0-9a-f]{8})?\.data")
    try:
        previous = onnx.load_model(path, load_external_data=False)
    except Exception:  # not an ONNX model (being replaced with --force): it names no data file
        return []
    names = {entry.value for tensor in previous.graph.initializer for entry in tensor.external_data
             if entry.key == "location"}
    return sorted(name for name in names if pattern.fullmatch(name))


EXTERNAL_THRESHOLD = 2_000_000_000  # protobuf's limit is 2 GiB: above this, tensors go to a data file
EXTERNAL_TENSOR_BYTES = 1024  # tensors under this stay in the model file even then
TRACE_LOCK = threading.Lock()


def template_with_weights(reader: OnnxReader, pairs: list[tuple[Layer, Layer]], only: set[str] | None = None) -> Any:
    """The template's ModelProto with every weight tensor replaced by the matching source tensor; with
    ``only``, just the new values of those template tensors, by name (the template is left as it is)."""
    template = reader.path
    current: dict[str, np.ndarray] = {}
    for source_layer, template_layer in pairs:
        for param, slot in template_layer.tensors.items():
            value = source_layer.tensors[param]
            name = reader.resolve(slot.provenance.source_key)
            if only is not None and name not in only:
                continue
            stored = current.get(name)
            if stored is None:
                stored = np.asarray(slot.read())
            if np.dtype(value.dtype) != stored.dtype:
                raise UsageError(f"{template_layer.name}.{param} is {stored.dtype} in the template, "
                                 f"{np.dtype(value.dtype)} in the source; weightport never casts silently",
                                 path=template, fix="Use a template exported in the source's dtype")
            current[name] = write_back(stored, slot.transforms, value.load())
    if only is not None:
        return current
    for name, proto in reader.tensors.items():
        if name in current:
            proto.CopyFrom(reader.numpy_helper.from_array(current[name], proto.name))
        elif proto.data_location == reader.onnx.TensorProto.EXTERNAL:  # read through the confined reader
            array = reader.reader(proto, tuple(int(d) for d in proto.dims), reader.proto_dtype(proto))()
            proto.CopyFrom(reader.numpy_helper.from_array(np.asarray(array), proto.name))
    return reader.proto


def matched_layers(model: Model, target: Model, template: str) -> list[tuple[Layer, Layer]]:
    """Source and template weighted layers paired by name when every template name is in the source,
    else by position; kinds, parameters and canonical shapes must agree."""
    ours, theirs = model.weighted_layers(), target.weighted_layers()
    names = {layer.name: layer for layer in ours}
    if all(layer.name in names for layer in theirs):
        pairs = [(names[layer.name], layer) for layer in theirs]
    elif len(ours) == len(theirs):
        pairs = list(zip(ours, theirs))
    else:
        raise UsageError(f"the template has {len(theirs)} layers with weights, the source {len(ours)}, and their "
                         "names differ", path=template, fix="Use a template of the same architecture")
    for source_layer, template_layer in pairs:
        shapes = {param: tuple(t.shape) for param, t in source_layer.tensors.items()}
        wanted = {param: tuple(t.shape) for param, t in template_layer.tensors.items()}
        if takes_kind_from_template(model, source_layer) and shapes == wanted:
            source_layer.kind, source_layer.attrs = template_layer.kind, dict(template_layer.attrs)
            canonical_layouts(source_layer)  # a state dict's tensors are stored in the canonical layouts
        if source_layer.kind != template_layer.kind or any(shapes.get(p) != s for p, s in wanted.items()):
            raise UsageError(f"template layer {template_layer.name!r} ({template_layer.kind} {wanted}) does not match "
                             f"source layer {source_layer.name!r} ({source_layer.kind} {shapes})", path=template,
                             fix="Use a template of the same architecture, with layers in the same order")
    return pairs


def takes_kind_from_template(model: Model, layer: Layer) -> bool:
    """A layer of a state dict read without ``--arch`` (kind ``other``): the template's layer of the same
    name or place, with the same parameters and canonical shapes, gives it its kind, as ``--arch`` would."""
    return not model.has_architecture and model.source.format in ARCHITECTURE_LESS and layer.kind == "other"


def graph_dtype(model: Model) -> np.dtype:
    """The one float dtype of the model's weights, which the traced graph computes in (float16/32/64)."""
    found = {np.dtype(t.dtype) for _, _, t in model.state_keys() if np.dtype(t.dtype).kind == "f" or is_bfloat16(t.dtype)}
    if any(is_bfloat16(d) for d in found):
        raise UnsupportedError("the weights are bfloat16, which ONNX Conv, Gemm and the RNN ops of opset 17 do "
                               "not take", fix="Give {opt:template=model.onnx} whose initializers are bfloat16 (the "
                               "weights are then replaced as they are), or convert to torch (.safetensors)")
    if len(found) > 1:
        raise UnsupportedError(f"the weights mix dtypes ({', '.join(sorted(d.name for d in found))}); a traced "
                               "graph computes in one", fix="Give {opt:template=model.onnx} with the same dtypes")
    return found.pop() if found else np.dtype(np.float32)


# An LSTM or GRU that torch.nn cannot compute (a GRU with reset_after=False, a hard_sigmoid recurrent
# activation: weightport.core.plan.torch_rnn_problem) is still an ONNX LSTM/GRU node: the graph is traced
# with torch.nn's LSTM/GRU standing in for it, then its node is written anew with onnx.helper, with the
# layer's own activations, linear_before_reset and W, R, B in ONNX's gate order.
RNN_GATES = {"lstm": ("ifco", "iofc"), "gru": ("rzh", "zrh")}  # canonical (PyTorch) -> ONNX gate order
ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "hard_sigmoid": "HardSigmoid"}


def direct_rnn_layers(model: Model) -> list[Layer]:
    """The LSTM/GRU layers written as ONNX nodes of their own (those torch.nn cannot compute)."""
    return [layer for layer in model.layers if torch_rnn_problem(layer)]


def traced_plan(model: Model, options: WriteOptions) -> Plan:
    """The canonical plan, with each directly written LSTM/GRU's tensors replaced by its ONNX W, R, B."""
    plan = canonical_plan(model, options, "onnx")
    direct = {id(layer): layer for layer in direct_rnn_layers(model)}
    if not direct:
        return plan
    tensors: list[PlannedTensor] = []
    written: set[int] = set()
    for item in plan.tensors:
        if id(item.layer) not in direct:
            tensors.append(item)
        elif id(item.layer) not in written:
            written.add(id(item.layer))
            tensors.extend(rnn_plan(direct[id(item.layer)]))
    return dataclasses.replace(plan, tensors=tensors)


def rnn_plan(layer: Layer) -> list[PlannedTensor]:
    """ONNX ``W`` (directions, G*hidden, input), ``R`` (directions, G*hidden, hidden) and ``B``
    (directions, 2*G*hidden: ``[Wb, Rb]``) of an LSTM/GRU layer: the canonical tensors stacked over
    directions (forward, reverse), gate blocks from PyTorch's order to ONNX's (LSTM i,f,g,o -> i,o,f,c;
    GRU r,z,n -> z,r,h)."""
    canonical, onnx_order = RNN_GATES[layer.kind]
    suffixes = ("", "_reverse") if layer.attrs.get("bidirectional") else ("",)
    reorder = ReorderBlocks(1, canonical, onnx_order)
    planned = []
    for name, param in (("W", "weight_ih_l0"), ("R", "weight_hh_l0")):
        parts = [layer.tensors[param + suffix] for suffix in suffixes]
        planned.append(PlannedTensor(f"{layer.name}.{name}", layer, param, parts[0], (reorder,), Layout("k o i"),
                                     tuple(parts[1:]), "stack"))
    if "bias_ih_l0" in layer.tensors:
        parts = [layer.tensors[param + suffix] for suffix in suffixes for param in ("bias_ih_l0", "bias_hh_l0")]
        halves = Relayout(Layout("(k s) o"), Layout("k (s o)"), (("k", len(suffixes)),))  # B = [Wb, Rb]
        planned.append(PlannedTensor(f"{layer.name}.B", layer, "bias_ih_l0", parts[0], (reorder, halves),
                                     Layout("k (s o)"), tuple(parts[1:]), "stack"))
    return planned


def rnn_node(onnx: Any, model: Model, layer: Layer, traced: Any, inputs: list[str]) -> Any:
    """The LSTM/GRU node of ``layer`` in place of ``traced`` (torch's stand-in): same data input, outputs,
    direction and hidden size; the layer's activations (f, g[, h] for each direction) and, for a GRU,
    linear_before_reset."""
    a = layer.attrs
    names = [a.get("recurrent_activation") or "sigmoid", a.get("activation") or "tanh"]
    names += names[1:] if layer.kind == "lstm" else []
    for name in names:
        if name not in ONNX_ACTIVATIONS:
            raise UnsupportedError(f"{layer.kind.upper()} layer {layer.name!r} uses activation {name!r}, which "
                                   "weightport does not write as an ONNX RNN activation",
                                   fix=f"Convert to a target that keeps it (keras, npz, raw); ONNX RNNs take "
                                       f"{', '.join(sorted(ONNX_ACTIVATIONS))} here")
    attrs = {x.name: onnx.helper.get_attribute_value(x) for x in traced.attribute
             if x.name in ("direction", "hidden_size")}
    names *= 2 if attrs.get("direction") in ("bidirectional", b"bidirectional") else 1  # one list per direction
    attrs["activations"] = [ONNX_ACTIVATIONS[name] for name in names]
    if "hard_sigmoid" in names:  # one (alpha, beta) per activation: onnxruntime gives them to those that take them
        alpha, beta = hard_sigmoid_coefficients(model)
        attrs.update(activation_alpha=[alpha] * len(names), activation_beta=[beta] * len(names))
    if layer.kind == "gru":
        attrs["linear_before_reset"] = int(bool(a.get("reset_after", True)))
    return onnx.helper.make_node(traced.op_type, inputs, list(traced.output), name=traced.name, **attrs)


def write_rnn_nodes(onnx: Any, proto: Any, model: Model, plan: Plan) -> None:
    """Replace the traced stand-in node of every directly written LSTM/GRU with its own node and tensors."""
    nodes = [node for node in proto.graph.node if node.op_type in ("LSTM", "GRU")]
    layers = [layer for layer in model.layers if layer.kind in RNN_GATES]
    if [node.op_type.lower() for node in nodes] != [layer.kind for layer in layers]:
        raise UnsupportedError("the traced graph's LSTM/GRU nodes do not match the model's recurrent layers",
                               fix="Give {opt:template=model.onnx} of the same architecture")
    by_layer: dict[int, dict[str, PlannedTensor]] = {}
    for item in plan.tensors:
        by_layer.setdefault(id(item.layer), {})[item.key.rsplit(".", 1)[1]] = item
    taken = {t.name for t in proto.graph.initializer} | {name for n in proto.graph.node for name in n.output}
    for node, layer in zip(nodes, layers):
        if not torch_rnn_problem(layer):
            continue
        inputs = [node.input[0]]
        for part in ("W", "R", "B"):
            item = by_layer[id(layer)].get(part)
            if item is None:
                inputs.append("")  # no bias: ONNX's B defaults to zeros
                continue
            name = unique_name(f"{layer.name}.{part}", taken)
            proto.graph.initializer.append(onnx.numpy_helper.from_array(item.load(), name))
            inputs.append(name)
        node.CopyFrom(rnn_node(onnx, model, layer, node, inputs + list(node.input[4:])))
    used = {name for node in proto.graph.node for name in node.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def unique_name(name: str, taken: set[str]) -> str:
    candidate, count = name, 1
    while candidate in taken:
        candidate, count = f"{name}_{count}", count + 1
    taken.add(candidate)
    return candidate


def stand_in(model: Model) -> Model:
    """``model`` with every LSTM/GRU torch.nn cannot compute replaced by one it can (same tensors): traced
    only for the graph around it, its node is then written anew (:func:`write_rnn_nodes`)."""
    direct = {id(layer) for layer in direct_rnn_layers(model)}
    if not direct:
        return model
    computable = {"reset_after": True, "recurrent_activation": "sigmoid", "activation": "tanh"}
    return dataclasses.replace(model, layers=[dataclasses.replace(layer, attrs={**layer.attrs, **computable})
                                              if id(layer) in direct else layer for layer in model.layers])


TRACE_SIZE = 64  # an input axis of unknown size (dynamic height, width, length) is traced at this size, and
# stays dynamic in the written graph


def trace_input(torch: Any, layer: Layer, dtype: Any, prefix: str) -> tuple[Any, dict[int, str]]:
    """The zero example an input layer is traced with (a batch of one; free sizes at :data:`TRACE_SIZE`)
    and its dynamic axes: the batch (axis 0, or ``attrs["batch_axis"]``, an RNN state's axis 1) and every
    free size."""
    sample = [TRACE_SIZE if n is None else int(n) for n in layer.output_shape or ()]
    batch_axis = int(layer.attrs.get("batch_axis", 0))
    shape = sample[:batch_axis] + [1] + sample[batch_axis:]
    free = [k for k, n in enumerate(layer.output_shape or ()) if n is None]
    axes = {batch_axis: "batch", **{k + (k >= batch_axis): f"{prefix}{k + 1}" for k in free}}
    return torch.zeros(tuple(shape), dtype=dtype), axes


def extra_outputs(model: Model) -> dict[str, str]:
    """The source's graph outputs other than the model's last layer (an RNN's final states ``Y_h``/``Y_c``
    as outputs of the graph), by output name -> layer name; traced as further outputs."""
    last = model.layers[-1].name if model.layers else None
    outputs = model.source.details.get("outputs") or {}
    return {name: layer for name, layer in outputs.items() if layer != last and model.layers.find(layer) is not None}


def traced_outputs(model: Model, taken: set[str]) -> tuple[list[str], list[str]]:
    """(layers, output names) of the traced graph, in the source graph's output order: the model's last
    layer is ``output``, another graph output of the source (an RNN's final state, a detector's other heads)
    keeps its source name.  Without further outputs: no layers (the module's own output) and ``output``."""
    last = model.layers[-1].name if model.layers else None
    extra = extra_outputs(model)
    if not extra:
        return [], ["output"]
    order = [(name, layer) for name, layer in (model.source.details.get("outputs") or {}).items()
             if layer == last or name in extra]
    if not any(layer == last for _, layer in order):
        order.insert(0, ("output", last))
    layers, names, seen = [], [], set(taken) | {"output"}
    for name, layer in order:
        if layer == last and "output" not in names:
            layers.append(layer)
            names.append("output")
            continue
        names.append(unique_name(name, seen))
        seen.add(names[-1])
        layers.append(layer)
    return layers, names


def traced_graph(model: Model, plan: Plan | None = None) -> Any:
    """The canonical model as an ONNX graph, traced from :class:`weightport.formats.torch.module.CanonicalModule`
    (LSTM/GRU layers torch.nn cannot compute written as their own nodes, from ``plan``)."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("writing a whole ONNX graph traces it with PyTorch, which is not installed",
                                     fix="pip install 'weightport[torch]', or give {opt:template=model.onnx}") from None
    from weightport.formats.torch.module import CanonicalModule, canonical_state_dict
    onnx = import_onnx()
    if not model.has_architecture or not model.layers or model.layers[0].output_shape is None \
            or all(n is None for n in model.layers[0].output_shape):  # free sizes trace at TRACE_SIZE, stay dynamic
        raise UnsupportedError("the source carries no architecture with an input shape to trace",
                               fix="Give {opt:template=model.onnx} of the same architecture (or the input shape: "
                                   "{opt:spec} for a .t7 file)")
    dtype = getattr(torch, graph_dtype(model).name)
    traced = stand_in(model)
    module = CanonicalModule(traced).eval().to(dtype)
    masked = [name for name, layer_module in module.layer_modules.items() if getattr(layer_module, "masked_by", None)]
    if masked:
        raise UnsupportedError(f"layer {masked[0]!r} skips the steps an Embedding(mask_zero=True) masks, which an "
                               "ONNX LSTM/GRU node cannot do (no mask input)",
                               fix="Convert to torch, keras, npz or raw, or save the model without mask_zero")
    module.load_state_dict(canonical_state_dict(traced), strict=False)
    takes_indices = len(model.layers) > 1 and model.layers[1].kind == "embedding"
    examples, names, dynamic = [], [], {}
    for position, entry in enumerate(model.input_layers() or model.layers[:1]):
        example, axes = trace_input(torch, entry, torch.int64 if takes_indices and not position else dtype,
                                    "axis" if not position else f"{entry.name}_axis")
        name = "input" if not position else unique_name(entry.name, set(names) | {"input", "output"})
        examples.append(example)
        names.append(name)
        dynamic[name] = axes
    returned, output_names = traced_outputs(model, set(names))
    module.returns = returned
    dynamic.update({name: {0: "batch"} for name in output_names[:1]})
    buffer = io.BytesIO()
    # torch.onnx.export keeps its state in module globals (GLOBALS.in_onnx_export, the opset) and
    # warnings.catch_warnings swaps the process's filters (not thread-safe before Python 3.14): one
    # export at a time.  Only the trace is serialised; reading, planning and writing run in parallel.
    with TRACE_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on RNN batch sizes and shape inference
        # PRESERVE: an eval-mode module exports BatchNormalization as it is, not folded into the Conv before it
        torch.onnx.export(module, tuple(examples),
                          buffer, dynamo=False, opset_version=17, input_names=names,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          output_names=output_names, dynamic_axes=dynamic)
    proto = onnx.load_model_from_string(buffer.getvalue())
    if direct_rnn_layers(model):
        write_rnn_nodes(onnx, proto, model, plan or traced_plan(model, WriteOptions()))
    return proto
