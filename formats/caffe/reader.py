"""Caffe models: a binary ``.caffemodel`` (NetParameter, V2 ``layer`` or legacy V1 ``layers``) with the
network's ``.prototxt``, read without Caffe and without protobuf (see :mod:`.wire`, :mod:`.prototxt`).

The structure comes from the prototxt (``--spec FILE``, or ``NAME.prototxt`` / ``deploy.prototxt`` beside
the model), the weights from the caffemodel by layer name; without a prototxt the caffemodel's own layer
definitions are used (its input shape is then unknown).  Layouts: Caffe stores every blob in the
canonical PyTorch layout already (Convolution ``o i kh kw``, Deconvolution ``i o kh kw``, InnerProduct
``o i`` over a C, H, W flattened input) and computes cross-correlation (rule ``caffe-correlation``), so no
kernel is flipped or transposed; legacy 4-D blob shapes (``1 1 o i``) lose their leading ones.

* BatchNorm holds mean, variance and a scale factor ``s``: Caffe normalises with ``mean/s`` and ``var/s``
  (``s == 0`` means 0); a following Scale layer (gamma, beta) is merged into the same canonical batchnorm.
* Pooling rounds its output size up (``ceil``) unless the prototxt says ``round_mode: FLOOR`` / ``ceil_mode:
  false``; average pooling counts the padding in its divisor. Both are recorded (``ceil_mode``,
  ``count_include_pad``) and reproduced by the torch module.
* Preprocessing (``transform_param`` scale, mean, mirror, crop; the BGR channel order) is recorded in the
  source details and printed as a note: a Caffe model expects its input as it was trained on.
"""

from __future__ import annotations

import mmap
import os
import re
from typing import Any, Callable

import numpy as np

from weightport.core.budget import declared_elements, require_regular_file
from weightport.core.errors import BadInputError, UnsupportedError, WeightportError
from weightport.core.layout import CORRELATION, Layout, NO_SEMANTICS
from weightport.core.model import Layer, Model, Provenance, SourceInfo, Tensor, array_tensor
from weightport.core.options import ReadOptions
from weightport.core.rules import CAFFE_RULE
from weightport.core.shapes import infer_shapes, layer_output_shape
from weightport.core.steps import Relayout, ScaleValues
from weightport.formats.caffe import prototxt
from weightport.formats.caffe.schema import TABLES, V1_TYPE_NAMES
from weightport.formats.caffe.wire import FloatRun, Message, WireDecoder, float_count, float_values

NAME = "caffe"
DESCRIPTION = "Caffe `.caffemodel` + `.prototxt` (V1 and V2 layers; no Caffe, no protobuf needed)"
EXTENSIONS = (".caffemodel",)

DATA_LAYERS = ("Data", "ImageData", "MemoryData", "HDF5Data", "WindowData", "DummyData", "AnnotatedData",
               "Python")
SKIPPED = ("Silence", "Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "SigmoidCrossEntropyLoss",
           "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss", "HDF5Output")
ACTIVATIONS = {"Sigmoid": "sigmoid", "TanH": "tanh", "Softmax": "softmax"}
BGR_NOTE = ("Caffe models are usually trained on BGR images (OpenCV/Caffe image loaders), 0-255 unless a "
            "scale says otherwise: feed inputs in the order and range the model was trained with")


def sniff(path: str) -> bool:
    """The .caffemodel extension and a first byte that opens a NetParameter field (name, layers, layer)."""
    if not path.lower().endswith(".caffemodel") or not os.path.isfile(path):  # a FIFO or device is never opened here
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return head[:1] in (b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x42") or head == b"\xa2\x06"


def safe_name(name: str) -> str:
    """A Caffe layer name (``conv1/7x7_s2``) as a torch module name: symbols and dots become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name) or "layer"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def find_prototxt(path: str, options: ReadOptions) -> str | None:
    """The network definition: ``--spec``, else ``NAME.prototxt``, ``deploy.prototxt`` or the only
    ``.prototxt`` beside the model; None when there is none."""
    if options.spec:
        return options.spec
    folder, stem = os.path.dirname(os.path.abspath(path)), os.path.splitext(os.path.basename(path))[0]
    for candidate in (f"{stem}.prototxt", f"{stem}.prototxt.txt", "deploy.prototxt", "deploy.prototxt.txt"):
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    others = [name for name in os.listdir(folder) if name.endswith((".prototxt", ".prototxt.txt"))]
    return os.path.join(folder, others[0]) if len(others) == 1 else None


def net_layers(net: Message) -> list[tuple[Message, str]]:
    """(layer, type name) of the V2 ``layer`` list, else of the legacy V1 ``layers``."""
    if net.has("layer"):
        return [(layer, str(layer.get("type", ""))) for layer in net.all("layer")]
    return [(layer, V1_TYPE_NAMES.get(str(layer.get("type", "")), str(layer.get("type", ""))))
            for layer in net.all("layers")]


def in_test_phase(layer: Message) -> bool:
    """Caffe's NetState filter for a deploy (TEST) net: include rules must name TEST, exclude rules must not."""
    phase = layer.get("phase")
    if phase is not None and phase not in ("TEST", 1):
        return False
    includes = [rule.get("phase") for rule in layer.all("include")]
    excludes = [rule.get("phase") for rule in layer.all("exclude")]
    if includes and not any(p in ("TEST", 1, None) for p in includes):
        return False
    return not any(p in ("TEST", 1) for p in excludes)


def per_axis(param: Message, name: str, rank: int, default: int) -> tuple[int, ...]:
    """A Caffe per-axis size: ``name_h``/``name_w`` for 2-D, else the repeated ``name`` (one value for all)."""
    if rank == 2 and (param.has(f"{name}_h") or param.has(f"{name}_w")):
        return int(param.get(f"{name}_h", default)), int(param.get(f"{name}_w", default))
    values = [int(v) for v in param.all(name)]
    if not values:
        return (default,) * rank
    if len(values) == 1:
        return (values[0],) * rank
    if len(values) != rank:
        raise UnsupportedError(f"{name} gives {len(values)} values for {rank} spatial axes",
                               fix="Give one value, or one per spatial axis")
    return tuple(values)


class CaffeReader:
    """One reading of one .caffemodel (and its prototxt)."""

    def __init__(self, path: str, options: ReadOptions) -> None:
        self.path = path
        require_regular_file(path)
        size = os.path.getsize(path)
        if size == 0:
            raise BadInputError("the .caffemodel is empty (0 bytes)", path=path,
                                fix="Check the file was copied completely")
        with open(path, "rb") as handle:
            self.buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.binary = WireDecoder(self.buffer, TABLES, path).message("NetParameter", 0, size)
        self.prototxt = find_prototxt(path, options)
        if self.prototxt is not None:
            require_regular_file(self.prototxt)
            label = f"prototxt {os.path.basename(self.prototxt)}"
            self.net = prototxt.parse(prototxt.read_text(self.prototxt, path, label), path, label)
        else:
            self.net = self.binary
        self.blobs = {str(layer.get("name", "")): layer.all("blobs") for layer, _ in net_layers(self.binary)}
        self.names: set[str] = set()
        self.producer: dict[str, str] = {}
        self.preprocessing: dict[str, Any] = {}
        self.post_processing_layers: list[str] = []

    # -- tensors ------------------------------------------------------------------------------------
    def blob(self, layer: str, index: int, what: str) -> Message:
        blobs = self.blobs.get(layer, [])
        if index >= len(blobs):
            raise BadInputError(f"layer {layer!r} has {len(blobs)} blobs in the caffemodel, so no {what} "
                                f"(blob {index})", path=self.path,
                                fix="Give the .caffemodel trained with this prototxt (layer names must match)")
        return blobs[index]

    def stored_shape(self, blob: Message) -> tuple[int, ...]:
        shape = blob.get("shape")
        if shape is not None:
            return tuple(int(d) for d in shape.all("dim"))
        return tuple(int(blob.get(axis, 0)) for axis in ("num", "channels", "height", "width"))

    def tensor(self, layer: str, index: int, param: str, pattern: str, semantics: str = NO_SEMANTICS,
               steps: tuple = (), expected: tuple[int, ...] | None = None, rule: str | None = None) -> Tensor:
        """The canonical tensor ``param`` over blob ``index`` of ``layer`` (stored in ``pattern`` order;
        leading unit axes of a legacy 4-D shape dropped).  ``rule`` says why its values change (shown by
        ``inspect``); a kernel's is the semantics rule's id (``caffe-correlation``)."""
        blob = self.blob(layer, index, param)
        shape = self.stored_shape(blob)
        values = blob.all("data") or blob.all("double_data")
        dtype = np.dtype(np.float64) if not blob.has("data") and blob.has("double_data") else np.dtype(np.float32)
        count = float_count(values)
        what = f"blob {index} ({param}) of layer {layer!r}"
        if declared_elements(shape, self.path, what) != count:
            raise BadInputError(f"{what} declares shape {list(shape)} but holds {count} values", path=self.path,
                                fix="The caffemodel is damaged or crafted; export it again")
        axes = pattern.split()
        extra = len(shape) - len(axes)
        if expected is not None and len(shape) == 1 and len(axes) == 1 and shape != expected:
            raise BadInputError(f"{what} has {shape[0]} values where {expected[0]} belong", path=self.path,
                                fix="Give the .caffemodel trained with this prototxt")
        if extra < 0 or any(size != 1 for size in shape[:extra]):
            raise BadInputError(f"{what} has shape {list(shape)}, not the {len(axes)}-axis {pattern!r} blob "
                                "it should be", path=self.path, fix="Give the .caffemodel trained with this prototxt")
        source = " ".join(["1"] * extra + axes)
        target = CORRELATION if semantics != NO_SEMANTICS else NO_SEMANTICS
        buffer = self.buffer
        dense = np.float64 if dtype == np.float64 else np.float32

        def read() -> np.ndarray:
            return float_values(buffer, values).astype(dense, copy=False).reshape(shape)
        relayout = Relayout(Layout(source, semantics), Layout(pattern, target))
        rule = CAFFE_RULE.id if semantics != NO_SEMANTICS else rule
        return Tensor(param, shape, dtype, Layout(pattern, target),
                      Provenance(f"{layer}.blobs[{index}]", source, semantics, rule), read, (relayout,) + steps)

    def scalar_blob(self, layer: str, index: int) -> float:
        """The single value of a one-value blob (BatchNorm's scale factor)."""
        blob = self.blob(layer, index, "scale factor")
        values = blob.all("data") or blob.all("double_data")
        if float_count(values) != 1:
            raise BadInputError(f"blob {index} of BatchNorm {layer!r} holds {float_count(values)} values, not the "
                                "one scale factor", path=self.path, fix="The caffemodel is damaged")
        return float(float_values(self.buffer, values)[0])

    # -- graph --------------------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        name, base, count = safe_name(name), safe_name(name), 1
        while name in self.names:
            name, count = f"{base}_{count}", count + 1
        self.names.add(name)
        return name

    def inputs_of(self, layer: Message) -> list[str]:
        missing = [str(b) for b in layer.all("bottom") if str(b) not in self.producer]
        if missing:
            raise BadInputError(f"layer {layer.get('name')!r} reads blob {missing[0]!r} that no layer before it "
                                "produces", path=self.path, fix="Check the prototxt")
        return [self.producer[str(b)] for b in layer.all("bottom")]

    def model(self) -> Model:
        details = {"data_format": "channels_first", "prototxt": self.prototxt, "channel_order": "BGR (assumed)"}
        model = Model(SourceInfo(self.path, NAME, "V2 layer" if self.net.has("layer") else "V1 layers",
                                 "caffe", details))
        model.has_architecture = True
        self.net_inputs(model)
        entries = [(layer, kind) for layer, kind in net_layers(self.net) if in_test_phase(layer)]
        skip: set[int] = set()
        for position, (layer, kind) in enumerate(entries):
            if position not in skip:
                self.add(model, layer, kind, entries, position, skip)
        if not any(layer.kind == "input" for layer in model.layers):
            raise BadInputError("the network has no input (no input: field, Input or data layer)",
                                path=self.path, fix="Give the deploy .prototxt with {opt:spec}")
        if self.prototxt is None:
            model.warn("no .prototxt beside the .caffemodel (or --spec): the structure comes from the caffemodel, "
                       "whose input shape is unknown")
        if self.post_processing_layers:
            model.warn(f"{len(self.post_processing_layers)} SSD post-processing layer(s) without weights are kept in "
                       f"the metadata, not ported: {', '.join(self.post_processing_layers)}; the converted model ends "
                       "at their inputs (the box offsets and class scores)")
        details["preprocessing"] = self.preprocessing
        details["tops"] = {layer: top for top, layer in self.producer.items()}  # the Caffe blob each layer's output is
        model.warn(f"preprocessing: {describe_preprocessing(self.preprocessing)}; {BGR_NOTE}")
        infer_shapes(model)
        self.check_shaped(model)
        return model

    def check_shaped(self, model: Model) -> None:
        """A Reshape or Slice that cannot apply to its (known) input is refused, naming the layer."""
        for layer in model.layers:
            feeding = [model.find(name) for name in layer.inputs]
            shapes = [f.output_shape for f in feeding if f is not None and f.output_shape is not None
                      and None not in f.output_shape]
            if layer.kind not in ("reshape_dims", "slice") or layer.output_shape is not None or \
                    len(shapes) != len(layer.inputs):
                continue
            try:
                layer_output_shape(layer, shapes)
            except (ValueError, IndexError) as error:
                raise BadInputError(f"{layer.source_class} {layer.name!r} cannot apply to its input of shape "
                                    f"{list(shapes[0])} ({error})", path=self.path,
                                    fix="Check the layer's parameters in the prototxt") from None

    def net_inputs(self, model: Model) -> None:
        """The deprecated ``input:`` / ``input_shape`` / ``input_dim`` inputs of the net."""
        names = [str(name) for name in self.net.all("input")]
        shapes = [tuple(int(d) for d in shape.all("dim")) for shape in self.net.all("input_shape")]
        dims = [int(d) for d in self.net.all("input_dim")]
        shapes += [tuple(dims[k:k + 4]) for k in range(0, len(dims) - 3, 4)]
        for index, name in enumerate(names):
            shape = shapes[index] if index < len(shapes) else (shapes[0] if shapes else None)
            self.add_input(model, name, name, shape, "input")

    def add_input(self, model: Model, name: str, top: str, shape: tuple[int, ...] | None, source: str) -> None:
        layer = Layer(self.unique(name), "input", {}, {}, [], source, None,
                      tuple(shape[1:]) if shape and len(shape) > 1 else None)
        model.layers.append(layer)
        self.producer[top] = layer.name

    def add(self, model: Model, layer: Message, kind: str, entries: list, position: int, skip: set[int]) -> None:
        name = str(layer.get("name", f"layer{position}"))
        transform = layer.get("transform_param")
        if transform is not None:
            self.preprocessing.update(transform_details(transform, self.buffer))
        if kind in SKIPPED:
            return
        tops = [str(top) for top in layer.all("top")]
        if kind == "Input" or kind in DATA_LAYERS:
            shapes = [tuple(int(d) for d in shape.all("dim")) for shape in
                      (layer.get("input_param") or Message("")).all("shape")]
            for index, top in enumerate(tops[:1] if kind != "Input" else tops):
                self.add_input(model, name if index == 0 else f"{name}_{top}", top,
                               shapes[min(index, len(shapes) - 1)] if shapes else None, kind)
            return
        if kind == "Split":
            source = self.inputs_of(layer)[0]
            for top in tops:
                self.producer[top] = source
            return
        if kind in SPLITTING:
            SPLITTING[kind](self, model, layer, name, tops)
            return
        built = BUILDERS.get(kind, CaffeReader.other)(self, layer, name)
        built.inputs = self.inputs_of(layer)
        if kind == "BatchNorm":
            follower = self.following_scale(entries, position, tops)
            if follower is not None:
                self.merge_scale(built, follower)
                skip.add(position + 1)
                tops = [str(top) for top in follower.all("top")]
        if built.kind == "dense":
            self.flatten_before(model, built)
        built.name = self.unique(name)
        model.layers.append(built)
        for top in tops:
            self.producer[top] = built.name

    def flatten_before(self, model: Model, dense: Layer) -> None:
        """InnerProduct flattens its input (C, H, W order, torch.flatten's) itself: an explicit flatten."""
        feeding = model.find(dense.inputs[0]) if dense.inputs else None
        if feeding is not None and feeding.kind in ("flatten", "dense"):
            return
        flatten = Layer(self.unique(f"{dense.source_class}_{dense.name}_flatten"), "flatten",
                        {"flatten_order": "chw"}, {}, list(dense.inputs), "InnerProduct (flatten)")
        model.layers.append(flatten)
        dense.inputs = [flatten.name]

    # -- layers -------------------------------------------------------------------------------------
    def convolution(self, layer: Message, name: str) -> Layer:
        param = layer.get("convolution_param") or Message("")
        transpose = str(layer.get("type", "")).upper().startswith("DECONV")
        if int(param.get("axis", 1)) != 1:
            raise UnsupportedError(f"Convolution {name!r} with axis {param.get('axis')}", path=self.path,
                                   fix="Only channel axis 1 is converted")
        weight_shape = self.stored_shape(self.blob(name, 0, "weight"))
        rank = len(weight_shape) - 2 if len(weight_shape) >= 3 else 2
        kind = "conv_transpose" if transpose else "conv"
        pattern = " ".join(["i o" if transpose else "o i"] + ["d", "h", "w"][3 - rank:]) if 1 <= rank <= 3 else ""
        if not pattern:
            raise UnsupportedError(f"Convolution {name!r} with {rank} spatial axes", path=self.path,
                                   fix="Convolutions of 1 to 3 spatial axes are converted")
        built = Layer(name, kind, {}, source_class="Deconvolution" if transpose else "Convolution",
                      semantics_rule=CAFFE_RULE.id)
        built.tensors["weight"] = self.tensor(name, 0, "weight", pattern, CORRELATION)
        group = int(param.get("group", 1))
        canonical = built.tensors["weight"].shape
        out_channels = int(param.get("num_output", canonical[1] * group if transpose else canonical[0]))
        if param.get("bias_term", True) and len(self.blobs.get(name, [])) > 1:
            built.tensors["bias"] = self.tensor(name, 1, "bias", "o", expected=(out_channels,))
        kernel = per_axis(param, "kernel", rank, 0) if param.has("kernel_h") else \
            per_axis(param, "kernel_size", rank, 0)
        if kernel != tuple(canonical[2:]):
            raise BadInputError(f"Convolution {name!r}: kernel {list(kernel)} in the prototxt, "
                                f"{list(canonical[2:])} in the caffemodel", path=self.path,
                                fix="Give the .caffemodel trained with this prototxt")
        pads = [[p, p] for p in per_axis(param, "pad", rank, 0)]
        built.attrs = {"rank": rank, "kernel_size": kernel, "strides": per_axis(param, "stride", rank, 1),
                       "dilations": tuple(int(d) for d in per_axis(param, "dilation", rank, 1)),
                       "padding": pads, "pads": pads, "groups": group, "data_format": "channels_first",
                       "in_channels": canonical[0] if transpose else canonical[1] * group,
                       "out_channels": out_channels}
        if transpose:
            built.attrs["output_padding"] = (0,) * rank
        return built

    def inner_product(self, layer: Message, name: str) -> Layer:
        param = layer.get("inner_product_param") or Message("")
        if int(param.get("axis", 1)) != 1:
            raise UnsupportedError(f"InnerProduct {name!r} with axis {param.get('axis')}", path=self.path,
                                   fix="Only axis 1 (flatten C, H, W) is converted")
        built = Layer(name, "dense", {}, source_class="InnerProduct")
        built.tensors["weight"] = self.tensor(name, 0, "weight", "i o" if param.get("transpose") else "o i")
        if param.get("transpose"):
            built.tensors["weight"].transforms = (Relayout(Layout("i o"), Layout("o i")),)
            built.tensors["weight"].layout = Layout("o i")
        units = built.tensors["weight"].shape[0]
        if param.get("bias_term", True) and len(self.blobs.get(name, [])) > 1:
            built.tensors["bias"] = self.tensor(name, 1, "bias", "o", expected=(units,))
        built.attrs = {"units": units, "flatten_order": "chw"}
        return built

    def batch_norm(self, layer: Message, name: str) -> Layer:
        param = layer.get("batch_norm_param") or Message("")
        factor = self.scalar_blob(name, 2)
        divide = ScaleValues(0.0 if factor == 0 else 1.0 / factor, f"Caffe BatchNorm scale factor {factor:g}")
        built = Layer(name, "batchnorm", {}, source_class="BatchNorm")
        why = f"Caffe BatchNorm stores the mean and variance times a scale factor ({factor:g})"
        built.tensors["running_mean"] = self.tensor(name, 0, "running_mean", "o", steps=(divide,), rule=why)
        channels = built.tensors["running_mean"].shape[0]
        built.tensors["running_var"] = self.tensor(name, 1, "running_var", "o", steps=(divide,), expected=(channels,),
                                                   rule=why)
        for param_name, value in (("weight", 1.0), ("bias", 0.0)):
            built.tensors[param_name] = array_tensor(param_name, np.full((channels,), value, np.float32), Layout("o"),
                                                     Provenance(f"{name} (none: BatchNorm without Scale)", "o"))
        built.attrs = {"epsilon": float(param.get("eps", 1e-5)), "momentum": 0.999, "num_features": channels,
                       "caffe_scale_factor": factor}
        return built

    def following_scale(self, entries: list, position: int, tops: list[str]) -> Message | None:
        if position + 1 >= len(entries):
            return None
        layer, kind = entries[position + 1]
        bottoms = [str(b) for b in layer.all("bottom")]
        return layer if kind == "Scale" and len(bottoms) == 1 and bottoms[0] in tops else None

    def merge_scale(self, built: Layer, scale: Message) -> None:
        """A Scale (gamma[, beta]) after a BatchNorm becomes the batchnorm's weight and bias."""
        name = str(scale.get("name", ""))
        gamma_beta = self.scale(scale, name)
        built.tensors["weight"] = gamma_beta.tensors["weight"]
        built.tensors["bias"] = gamma_beta.tensors["bias"]
        built.source_class = "BatchNorm+Scale"
        built.attrs["merged_scale"] = name

    def scale(self, layer: Message, name: str) -> Layer:
        """A Scale layer on its own: a batchnorm with mean 0, variance 1 and epsilon 0 (exactly x*gamma+beta)."""
        param = layer.get("scale_param") or Message("")
        if int(param.get("axis", 1)) != 1 or int(param.get("num_axes", 1)) != 1 or len(layer.all("bottom")) != 1:
            raise UnsupportedError(f"Scale {name!r} is not a per-channel scale of one input", path=self.path,
                                   fix="Only Scale with axis 1, num_axes 1 and learned blobs is converted")
        built = Layer(name, "batchnorm", {}, source_class="Scale")
        built.tensors["weight"] = self.tensor(name, 0, "weight", "o")
        channels = built.tensors["weight"].shape[0]
        if param.get("bias_term", False) and len(self.blobs.get(name, [])) > 1:
            built.tensors["bias"] = self.tensor(name, 1, "bias", "o", expected=(channels,))
        else:
            built.tensors["bias"] = array_tensor("bias", np.zeros((channels,), np.float32), Layout("o"),
                                                 Provenance(f"{name} (no bias_term)", "o"))
        for param_name, value in (("running_mean", 0.0), ("running_var", 1.0)):
            built.tensors[param_name] = array_tensor(param_name, np.full((channels,), value, np.float32), Layout("o"),
                                                     Provenance(f"{name} (none: Scale alone)", "o"))
        built.attrs = {"epsilon": 0.0, "momentum": 0.999, "num_features": channels}
        return built

    def pooling(self, layer: Message, name: str) -> Layer:
        param = layer.get("pooling_param") or Message("")
        method = str(param.get("pool", "MAX"))
        if method not in ("MAX", "AVE"):
            return self.other(layer, name)
        mode = "max" if method == "MAX" else "avg"
        if param.get("global_pooling"):
            return Layer(name, "global_pool", {"mode": mode, "keepdims": True}, source_class="Pooling")
        kernel = per_axis(param, "kernel", 2, 0) if param.has("kernel_h") else per_axis(param, "kernel_size", 2, 0)
        if 0 in kernel:
            raise BadInputError(f"Pooling {name!r} has no kernel size", path=self.path,
                                fix="Give kernel_size (or kernel_h and kernel_w)")
        ceil = str(param.get("round_mode", "CEIL")) != "FLOOR" and param.get("ceil_mode", True) is not False
        pads = [[p, p] for p in per_axis(param, "pad", 2, 0)]
        return Layer(name, "pool", {"rank": 2, "kernel_size": kernel, "strides": per_axis(param, "stride", 2, 1),
                                    "padding": pads, "pads": pads, "mode": mode, "ceil_mode": ceil,
                                    "count_include_pad": mode == "avg"}, source_class="Pooling")

    def relu(self, layer: Message, name: str) -> Layer:
        slope = float((layer.get("relu_param") or Message("")).get("negative_slope", 0.0))
        if slope:
            return Layer(name, "other", {"op": "LeakyReLU", "negative_slope": slope}, source_class="ReLU")
        return Layer(name, "activation", {"activation": "relu"}, source_class="ReLU")

    def activation(self, layer: Message, name: str) -> Layer:
        kind = CaffeReader.type_of(layer)
        axis = int((layer.get("softmax_param") or Message("")).get("axis", 1))
        if kind == "Softmax" and axis != 1:
            return Layer(name, "softmax", {"axis": axis, "log": False}, source_class=kind)
        return Layer(name, "activation", {"activation": ACTIVATIONS[kind]}, source_class=kind)

    def prelu(self, layer: Message, name: str) -> Layer:
        built = Layer(name, "prelu", {}, source_class="PReLU")
        built.tensors["weight"] = self.tensor(name, 0, "weight", "c")
        built.attrs = {"channel_shared": bool((layer.get("prelu_param") or Message("")).get("channel_shared"))}
        return built

    def eltwise(self, layer: Message, name: str) -> Layer:
        param = layer.get("eltwise_param") or Message("")
        operation = str(param.get("operation", "SUM"))
        coefficients = [float(c) for c in param.all("coeff")]
        if operation == "SUM" and all(c == 1.0 for c in coefficients):
            return Layer(name, "add", {}, source_class="Eltwise")
        if operation == "PROD":
            return Layer(name, "multiply", {}, source_class="Eltwise")
        return Layer(name, "other", {"op": f"Eltwise {operation}", "coeff": coefficients}, source_class="Eltwise")

    def concat(self, layer: Message, name: str) -> Layer:
        param = layer.get("concat_param") or Message("")
        axis = int(param.get("axis", param.get("concat_dim", 1)))
        if axis < 1:
            return self.other(layer, name)
        return Layer(name, "concat", {"axis": axis - 1}, source_class="Concat")

    def flatten(self, layer: Message, name: str) -> Layer:
        param = layer.get("flatten_param") or Message("")
        if int(param.get("axis", 1)) != 1 or int(param.get("end_axis", -1)) != -1:
            return self.other(layer, name)
        return Layer(name, "flatten", {"flatten_order": "chw"}, source_class="Flatten")

    def lrn(self, layer: Message, name: str) -> Layer:
        """LRN (Caffe's defaults: local_size 5, alpha 1, beta 0.75, k 1, ACROSS_CHANNELS); Caffe divides alpha
        by the window's size (local_size across channels, its square within a channel)."""
        param = layer.get("lrn_param") or Message("")
        return Layer(name, "lrn", {"size": int(param.get("local_size", 5)), "alpha": float(param.get("alpha", 1.0)),
                                   "beta": float(param.get("beta", 0.75)), "k": float(param.get("k", 1.0)),
                                   "region": str(param.get("norm_region", "ACROSS_CHANNELS"))}, source_class="LRN")

    def power(self, layer: Message, name: str) -> Layer:
        """Power: ``(shift + scale * x) ^ power`` (defaults 0, 1, 1)."""
        param = layer.get("power_param") or Message("")
        return Layer(name, "power", {"power": float(param.get("power", 1.0)), "scale": float(param.get("scale", 1.0)),
                                     "shift": float(param.get("shift", 0.0))}, source_class="Power")

    def reshape(self, layer: Message, name: str) -> Layer:
        """Reshape: ``shape`` dims (0 copies an input axis, -1 infers one) over ``axis`` .. ``axis + num_axes``."""
        param = layer.get("reshape_param") or Message("")
        dims = [int(d) for d in (param.get("shape") or Message("")).all("dim")]
        return Layer(name, "reshape_dims", {"dims": dims, "axis": int(param.get("axis", 0)),
                                            "num_axes": int(param.get("num_axes", -1))}, source_class="Reshape")

    def permute(self, layer: Message, name: str) -> Layer:
        """SSD's Permute keeping the batch axis first: a permute of the other axes (1-based, as Keras counts)."""
        order = [int(o) for o in (layer.get("permute_param") or Message("")).all("order")]
        if not order or order[0] != 0:
            return self.other(layer, name)
        return Layer(name, "permute", {"dims": order[1:]}, source_class="Permute")

    def slices(self, model: Model, layer: Message, name: str, tops: list[str]) -> None:
        """Slice: one ``slice`` layer per top, cut along ``axis`` (legacy ``slice_dim``) at the
        ``slice_point`` values, or into equal parts without them."""
        param = layer.get("slice_param") or Message("")
        axis = int(param.get("axis", param.get("slice_dim", 1)))
        points = [int(p) for p in param.all("slice_point")]
        if points and len(points) != len(tops) - 1:
            raise BadInputError(f"Slice {name!r} has {len(points)} slice points for {len(tops)} tops", path=self.path,
                                fix="Give one slice_point fewer than the tops")
        inputs = self.inputs_of(layer)
        for index, top in enumerate(tops):
            part = Layer(self.unique(name if index == 0 else f"{name}_{top}"), "slice",
                         {"axis": axis, "points": points, "index": index, "parts": len(tops)}, {}, inputs, "Slice")
            model.layers.append(part)
            self.producer[top] = part.name

    def normalize(self, model: Model, layer: Message, name: str, tops: list[str]) -> None:
        """SSD's Normalize: the L2 normalisation ``x / sqrt(sum x^2 + eps)`` (over the channels, or every axis with
        ``across_spatial``), then its learned per-channel scale as a Scale (``NAME.weight``)."""
        param = layer.get("norm_param") or Message("")
        if param.get("channel_shared", True):
            raise UnsupportedError(f"Normalize {name!r} with channel_shared (one scale for every channel)",
                                   path=self.path, fix="Only Normalize with channel_shared false is converted")
        norm = Layer(self.unique(f"{name}_l2"), "normalize",
                     {"p": 2.0, "eps": float(param.get("eps", 1e-10)), "axis": 1,
                      "across_spatial": bool(param.get("across_spatial", True))}, {}, self.inputs_of(layer),
                     "Normalize")
        model.layers.append(norm)
        scale = Layer(name, "batchnorm", {}, source_class="Normalize")
        scale.tensors["weight"] = self.tensor(name, 0, "weight", "o")
        channels = scale.tensors["weight"].shape[0]
        for param_name, value in (("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            scale.tensors[param_name] = array_tensor(param_name, np.full((channels,), value, np.float32), Layout("o"),
                                                     Provenance(f"{name} (none: Normalize's scale)", "o"))
        scale.attrs = {"epsilon": 0.0, "momentum": 0.999, "num_features": channels}
        scale.inputs = [norm.name]
        scale.name = self.unique(name)
        model.layers.append(scale)
        for top in tops:
            self.producer[top] = scale.name

    def post_processing(self, layer: Message, name: str) -> Layer:
        """SSD's PriorBox / DetectionOutput: weightless box arithmetic after the network, kept with its parameters
        in the metadata and reported as not ported (the torch module stops before it)."""
        kind = CaffeReader.type_of(layer)
        params = {key: plain(values[-1], self.buffer) for key, values in layer.fields.items() if key.endswith("_param")}
        self.post_processing_layers.append(f"{name} ({kind})")
        return Layer(name, "other", {"op": kind, "post_processing": True, "params": params}, source_class=kind)

    def dropout(self, layer: Message, name: str) -> Layer:
        return Layer(name, "dropout", {}, source_class="Dropout")

    def other(self, layer: Message, name: str) -> Layer:
        """A layer weightport carries by name only (LRN, Power, Reshape, Slice, ...); one with weights is refused."""
        kind = CaffeReader.type_of(layer)
        if self.blobs.get(name):
            raise UnsupportedError(f"layer {name!r} of type {kind} holds {len(self.blobs[name])} weight blob(s) "
                                   "weightport cannot map", path=self.path,
                                   fix="Supported weighted layers: Convolution, Deconvolution, InnerProduct, "
                                       "BatchNorm, Scale, PReLU")
        return Layer(name, "other", {"op": kind}, source_class=kind)

    @staticmethod
    def type_of(layer: Message) -> str:
        kind = str(layer.get("type", ""))
        return V1_TYPE_NAMES.get(kind, kind)


BUILDERS: dict[str, Callable[[CaffeReader, Message, str], Layer]] = {
    "Convolution": CaffeReader.convolution, "Deconvolution": CaffeReader.convolution,
    "InnerProduct": CaffeReader.inner_product, "BatchNorm": CaffeReader.batch_norm, "Scale": CaffeReader.scale,
    "Pooling": CaffeReader.pooling, "ReLU": CaffeReader.relu, "Sigmoid": CaffeReader.activation,
    "TanH": CaffeReader.activation, "Softmax": CaffeReader.activation, "PReLU": CaffeReader.prelu,
    "Eltwise": CaffeReader.eltwise, "Concat": CaffeReader.concat, "Flatten": CaffeReader.flatten,
    "Dropout": CaffeReader.dropout, "LRN": CaffeReader.lrn, "Power": CaffeReader.power,
    "Reshape": CaffeReader.reshape, "Permute": CaffeReader.permute, "PriorBox": CaffeReader.post_processing,
    "DetectionOutput": CaffeReader.post_processing,
}
SPLITTING: dict[str, Callable[[CaffeReader, Model, Message, str, list[str]], None]] = {  # layers of several parts
    "Slice": CaffeReader.slices, "Normalize": CaffeReader.normalize,
}


def plain(value: Any, buffer: Any) -> Any:
    """A decoded parameter as JSON-ready data (a message as a dict of its fields, one value or a list)."""
    if isinstance(value, Message):
        return {key: [plain(v, buffer) for v in values] if len(values) > 1 else plain(values[0], buffer)
                for key, values in value.fields.items()}
    if isinstance(value, FloatRun):
        return [float(v) for v in float_values(buffer, [value])]
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def transform_details(transform: Message, buffer: Any) -> dict[str, Any]:
    """What a ``transform_param`` says about the input: scale, per-channel mean values, mean file, crop, mirror."""
    details: dict[str, Any] = {"scale": float(transform.get("scale", 1.0))}
    means = transform.all("mean_value")
    if means:
        details["mean_value"] = [float(v) for v in float_values(buffer, means)]
    for key in ("mean_file", "crop_size", "mirror", "force_color", "force_gray"):
        if transform.has(key):
            details[key] = transform.get(key)
    return details


def describe_preprocessing(details: dict[str, Any]) -> str:
    if not details:
        return "the file records none (no transform_param: mean and scale live in the code that ran the model)"
    parts = [f"(x - mean {details['mean_value']})" if "mean_value" in details else
             f"(x - mean image {details['mean_file']!r})" if "mean_file" in details else "x (no mean)"]
    parts.append(f"* {details.get('scale', 1.0):g}")
    extra = ", ".join(f"{key} {details[key]}" for key in ("crop_size", "mirror") if key in details)
    return "input = " + " ".join(parts) + (f" ({extra})" if extra else "")


def read(path: str, options: ReadOptions) -> Model:
    """Read a Caffe model into the canonical model (blobs stay in the memory-mapped file until loaded)."""
    try:
        return CaffeReader(path, options).model()
    except WeightportError as error:
        raise error.with_path(getattr(error, "path", None) or path)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as error:
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise BadInputError(f"Caffe model not understood ({type(error).__name__}: {first})", path=path,
                            fix="The model is damaged or uses a construct weightport does not read") from None
