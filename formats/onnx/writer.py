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
import io
import os
import re
import secrets
import shutil
import threading
import warnings
from typing import Any

import numpy as np

from weightport.core.atomic import atomic_path, check_can_write, fsync_folder, staging_folder
from weightport.core.dtypes import is_bfloat16
from weightport.core.errors import BadInputError, MissingDependencyError, UnsupportedError, UsageError
from weightport.core.layout import CORRELATION
from weightport.core.model import Layer, Model
from weightport.core.options import ReadOptions, WriteOptions
from weightport.core.plan import Plan, PlannedTensor, canonical_plan
from weightport.core.steps import TakeIndex, write_back
from weightport.formats.onnx.reader import OnnxReader, import_onnx

def onnx_plan(model: Model, options: WriteOptions) -> Plan:
    """What the ONNX target writes.

    Without a template: the canonical plan (the traced graph's initializers are the canonical
    tensors as they are).  With ``options.template``: one entry per weight slot of the template,
    keyed by the template's initializer name (``NAME[i]`` for one of a stacked array's parts, as
    ONNX's LSTM ``B = [Wb, Rb]``), with the inverse of the steps the ONNX reader applies to it.
    """
    if not options.template:
        return canonical_plan(model, options, "onnx")
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
                         fix="Drop --target-semantics for --to onnx")
    if options.template:
        reader = OnnxReader(options.template, ReadOptions())
        pairs = matched_layers(model, reader.model(), options.template)
        plan = template_plan(model, reader, pairs)
        proto = template_with_weights(reader, pairs)
    else:
        plan = canonical_plan(model, options, "onnx")
        proto = traced_graph(model)
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
    check_can_write(path, force)
    folder, name = os.path.split(os.path.abspath(path))
    previous = weightport_data_files(onnx, path)
    data_name = f"{name}.data"
    if os.path.lexists(os.path.join(folder, data_name)):
        check_can_write(os.path.join(folder, data_name), force)
        data_name = f"{name}.{secrets.token_hex(4)}.data"
    staging = staging_folder(path)
    try:
        staged = os.path.join(staging, name)
        onnx.save_model(proto, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=EXTERNAL_TENSOR_BYTES)
        check_written(onnx, staged, path)
        written = [name for name in (data_name, name) if os.path.exists(os.path.join(staging, name))]
        for each in written:
            with open(os.path.join(staging, each), "rb+") as handle:
                os.fsync(handle.fileno())
        if data_name in written:
            os.replace(os.path.join(staging, data_name), os.path.join(folder, data_name))
        os.replace(staged, path)
        fsync_folder(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in previous:
        if old != data_name:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, old))


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


def template_with_weights(reader: OnnxReader, pairs: list[tuple[Layer, Layer]]) -> Any:
    """The template's ModelProto with every weight tensor replaced by the matching source tensor."""
    template = reader.path
    current: dict[str, np.ndarray] = {}
    for source_layer, template_layer in pairs:
        for param, slot in template_layer.tensors.items():
            value = source_layer.tensors[param]
            name = reader.resolve(slot.provenance.source_key)
            stored = current.get(name)
            if stored is None:
                stored = np.asarray(slot.read())
            if np.dtype(value.dtype) != stored.dtype:
                raise UsageError(f"{template_layer.name}.{param} is {stored.dtype} in the template, "
                                 f"{np.dtype(value.dtype)} in the source; weightport never casts silently",
                                 path=template, fix="Use a template exported in the source's dtype")
            current[name] = write_back(stored, slot.transforms, value.load())
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
        if source_layer.kind != template_layer.kind or any(shapes.get(p) != s for p, s in wanted.items()):
            raise UsageError(f"template layer {template_layer.name!r} ({template_layer.kind} {wanted}) does not match "
                             f"source layer {source_layer.name!r} ({source_layer.kind} {shapes})", path=template,
                             fix="Use a template of the same architecture, with layers in the same order")
    return pairs


def graph_dtype(model: Model) -> np.dtype:
    """The one float dtype of the model's weights, which the traced graph computes in (float16/32/64)."""
    found = {np.dtype(t.dtype) for _, _, t in model.state_keys() if np.dtype(t.dtype).kind == "f" or is_bfloat16(t.dtype)}
    if any(is_bfloat16(d) for d in found):
        raise UnsupportedError("the weights are bfloat16, which ONNX Conv, Gemm and the RNN ops of opset 17 do "
                               "not take", fix="Give --template model.onnx whose initializers are bfloat16 (the "
                               "weights are then replaced as they are), or convert to torch (.safetensors)")
    if len(found) > 1:
        raise UnsupportedError(f"the weights mix dtypes ({', '.join(sorted(d.name for d in found))}); a traced "
                               "graph computes in one", fix="Give --template model.onnx with the same dtypes")
    return found.pop() if found else np.dtype(np.float32)


def traced_graph(model: Model) -> Any:
    """The canonical model as an ONNX graph, traced from :class:`weightport.formats.torch.module.CanonicalModule`."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("writing a whole ONNX graph traces it with PyTorch, which is not installed",
                                     fix="pip install 'weightport[torch]', or give --template model.onnx") from None
    from weightport.formats.torch.module import CanonicalModule, canonical_state_dict
    onnx = import_onnx()
    if not model.has_architecture or not model.layers or model.layers[0].output_shape is None:
        raise UnsupportedError("the source carries no architecture with an input shape to trace",
                               fix="Give --template model.onnx of the same architecture")
    dtype = getattr(torch, graph_dtype(model).name)
    module = CanonicalModule(model).eval().to(dtype)
    module.load_state_dict(canonical_state_dict(model), strict=False)
    shape = (1,) + tuple(int(n) for n in model.layers[0].output_shape)
    takes_indices = len(model.layers) > 1 and model.layers[1].kind == "embedding"
    example = torch.zeros(shape, dtype=torch.int64 if takes_indices else dtype)
    buffer = io.BytesIO()
    # torch.onnx.export keeps its state in module globals (GLOBALS.in_onnx_export, the opset) and
    # warnings.catch_warnings swaps the process's filters (not thread-safe before Python 3.14): one
    # export at a time.  Only the trace is serialised; reading, planning and writing run in parallel.
    with TRACE_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on RNN batch sizes and shape inference
        # PRESERVE: an eval-mode module exports BatchNormalization as it is, not folded into the Conv before it
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          training=torch.onnx.TrainingMode.PRESERVE,
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return onnx.load_model_from_string(buffer.getvalue())
