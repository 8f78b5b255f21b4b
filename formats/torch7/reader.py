"""Torch7 ``.t7`` models (``torch.save`` of an nn module), read by :mod:`.serial` without Lua: no Lua object is
built and nothing runs; an unknown class is reported by its name.

Layouts (Torch7 computes cross-correlation, rule ``torch7-correlation``):

* ``nn.SpatialConvolution`` weight ``(nOut, nIn, kH, kW)``; ``nn.SpatialConvolutionMM`` stores it
  flattened ``(nOut, nIn*kH*kW)`` and is unflattened; ``nn.SpatialDilatedConvolution`` adds dilations;
  ``nn.SpatialFullConvolution`` (transposed) ``(nIn, nOut, kH, kW)`` with ``adjW``/``adjH`` output padding.
* ``nn.SpatialBatchNormalization`` / ``nn.BatchNormalization``: newer files hold ``running_var``, old ones
  ``running_std`` = 1/sqrt(var + eps), converted to the variance; without ``weight`` (affine false) the
  scale is 1 and the shift 0.
* ``nn.Linear`` ``(out, in)``; ``nn.View``/``nn.Reshape`` to one dimension flatten C, H, W (torch's order).
* Pooling keeps ``ceil_mode`` and (average) ``count_include_pad`` (Torch7's default: true).
* ``nn.Normalize(p, eps)`` divides by ``(sum |x|^p + eps)^(1/p)`` over the features; ``nn.LogSoftMax``.
* ``cudnn.X`` reads as ``nn.X``.  Containers: ``nn.Sequential``, ``nn.Concat`` (inception branches on one
  input), ``nn.ConcatTable`` with ``nn.JoinTable`` / ``nn.CAddTable`` (residual blocks), ``nn.Identity``.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from weightport.core.budget import MAX_NESTING, require_regular_file
from weightport.core.describe import parse_json
from weightport.core.errors import BadInputError, LayoutError, UnsupportedError, UsageError, WeightportError
from weightport.core.layout import CORRELATION, Layout, NO_SEMANTICS
from weightport.core.model import Layer, Model, Provenance, SourceInfo, Tensor, array_tensor
from weightport.core.options import ReadOptions
from weightport.core.rules import TORCH7_RULE
from weightport.core.shapes import infer_shapes
from weightport.core.steps import Relayout
from weightport.formats.torch7.serial import TensorRef, TorchObject, load, read_array

NAME = "torch7"
DESCRIPTION = "Torch7 `.t7` nn models (binary torch.save, either byte order; no Lua needed, nothing runs)"
EXTENSIONS = (".t7",)

ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "SoftMax": "softmax"}
PASS = ("Dropout", "SpatialDropout", "Identity", "Copy")


def sniff(path: str) -> bool:
    """The .t7 extension and a first int32 that is a Torch7 type tag (a torch object or a table) either way round."""
    if not path.lower().endswith(".t7") or not os.path.isfile(path):  # a FIFO or device is never opened here
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head in (b"\x04\x00\x00\x00", b"\x00\x00\x00\x04", b"\x03\x00\x00\x00", b"\x00\x00\x00\x03")


@dataclass(frozen=True)
class StdToVariance:
    """A value step: Torch7's old ``running_std`` (1 / sqrt(var + eps)) as the variance, ``1/std**2 - eps``."""

    eps: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        if np.any(array <= 0):
            raise LayoutError("a running_std that is not positive has no variance")
        return (1.0 / (array.astype(np.float64) ** 2) - self.eps).astype(array.dtype)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> "VarianceToStd":
        return VarianceToStd(self.eps)

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"running_std -> variance: 1/std^2 - eps (eps {self.eps:g})"


@dataclass(frozen=True)
class VarianceToStd:
    """The inverse of :class:`StdToVariance`."""

    eps: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        return (1.0 / np.sqrt(array.astype(np.float64) + self.eps)).astype(array.dtype)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> StdToVariance:
        return StdToVariance(self.eps)

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"variance -> running_std: 1/sqrt(var + eps) (eps {self.eps:g})"


def short_class(name: str) -> str:
    """``nn.SpatialConvolution`` and ``cudnn.SpatialConvolution`` -> ``SpatialConvolution``."""
    return name.split(".", 1)[1] if name.startswith(("nn.", "cudnn.")) else name


def children(module: TorchObject) -> list[Any]:
    """A container's ``modules`` table (Lua list: keys 1, 2, ...) in order."""
    table = module.get("modules") or {}
    if not isinstance(table, dict):
        return []
    keys = sorted(key for key in table if isinstance(key, float) and key.is_integer() and key >= 1)
    return [table[key] for key in keys]


def number(module: TorchObject, key: str, default: float = 0.0) -> float:
    value = module.get(key, default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def integer(module: TorchObject, key: str, default: int = 0) -> int:
    return int(number(module, key, default))


class Torch7Reader:
    """One reading of one .t7 file."""

    def __init__(self, path: str, options: ReadOptions) -> None:
        self.path = path
        require_regular_file(path)
        size = os.path.getsize(path)
        if size == 0:
            raise BadInputError("the .t7 file is empty (0 bytes)", path=path, fix="Check the file was copied completely")
        with open(path, "rb") as handle:
            self.buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.root, self.layout = load(self.buffer, path)
        if not isinstance(self.root, TorchObject):
            raise BadInputError(f"the file holds a {type(self.root).__name__}, not an nn module", path=path,
                                fix="Give a torch.save() of an nn model (weights-only tables are not read yet)")
        self.model_: Model | None = None
        self.input_shape = input_shape(options.spec or beside(path), path)

    # -- tensors ------------------------------------------------------------------------------------
    def tensor(self, owner: str, module: TorchObject, key: str, src: str, dst: str, semantics: str = NO_SEMANTICS,
               known: tuple = (), steps: tuple = (), rule: str | None = None) -> Tensor:
        """The canonical tensor of ``module``'s field ``key`` (stored ``src``, canonical ``dst``); ``rule`` says
        why its values change (shown by ``inspect``); a kernel's is the semantics rule's id."""
        ref = module.get(key)
        if not isinstance(ref, TensorRef) or ref.storage is None:
            raise BadInputError(f"{module.class_name} {owner!r} has no {key} tensor", path=self.path,
                                fix="The model is damaged or was saved without its weights (clearState keeps them)")
        if ref.storage.dtype.kind != "f":
            raise UnsupportedError(f"{key} of {owner!r} is a {ref.class_name}, not floating point", path=self.path,
                                   fix="Save the model as float (model:float())")
        buffer = self.buffer
        target = CORRELATION if semantics != NO_SEMANTICS else NO_SEMANTICS
        relayout = Relayout(Layout(src, semantics), Layout(dst, target), known)
        try:
            relayout.shape(ref.sizes)
        except (LayoutError, ValueError, KeyError) as error:
            raise BadInputError(f"{key} of {module.class_name} {owner!r} has shape {list(ref.sizes)}, not {src!r} "
                                f"({error})", path=self.path, fix="The model is damaged or crafted") from None
        dtype = ref.storage.dtype.newbyteorder("=")
        return Tensor(key, ref.sizes, dtype, Layout(dst, target),
                      Provenance(f"{owner}.{key}", src, semantics, TORCH7_RULE.id if semantics != NO_SEMANTICS else rule),
                      lambda: read_array(buffer, ref), (relayout,) + steps)

    def constant(self, owner: str, name: str, value: float, count: int, why: str) -> Tensor:
        return array_tensor(name, np.full((count,), value, np.float32), Layout("o"), Provenance(f"{owner} ({why})", "o"))

    # -- graph --------------------------------------------------------------------------------------
    def model(self) -> Model:
        model = Model(SourceInfo(self.path, NAME, "binary", "lua",
                                 {"data_format": "channels_first",
                                  "byte_order": "little" if self.layout.order == "<" else "big",
                                  "long_bytes": self.layout.long_size}))
        model.has_architecture = True
        self.model_ = model
        first = self.first_leaf(self.root)
        channels = integer(first, "nInputPlane") if first is not None else 0
        shape = (channels, None, None) if channels and "Spatial" in first.class_name else None
        if self.input_shape is not None:
            shape = self.input_shape
        else:
            model.warn("a .t7 file records no input size: give --spec FILE (or NAME.spec.json beside it) with "
                       "{\"input_shape\": [C, H, W]} for shape inference and the ONNX target")
        model.layers.append(Layer("input", "input", {}, {}, [], "input", None, shape))
        self.build(self.root, ["input"], "", 0)
        infer_shapes(model)
        return model

    def first_leaf(self, module: Any) -> TorchObject | None:
        for _ in range(MAX_NESTING):
            if not isinstance(module, TorchObject):
                return None
            inner = children(module)
            if not inner:
                return module
            module = inner[0]
        return None

    def add(self, layer: Layer, inputs: list[str]) -> list[str]:
        assert self.model_ is not None
        layer.inputs = list(inputs)
        self.model_.layers.append(layer)
        return [layer.name]

    def build(self, module: Any, values: list[str], name: str, depth: int) -> list[str]:
        """Add ``module`` fed by ``values`` (one name, or several for a table); the names of its outputs."""
        if depth > MAX_NESTING:
            raise BadInputError(f"modules nested more than {MAX_NESTING} deep", path=self.path,
                                fix="The model is damaged or crafted")
        if not isinstance(module, TorchObject):
            raise BadInputError(f"module {name or 'root'!r} is a {type(module).__name__}, not an nn module",
                                path=self.path, fix="The model is damaged or crafted")
        kind = short_class(module.class_name)
        if kind in CONTAINERS:
            return CONTAINERS[kind](self, module, values, name, depth)
        if kind in PASS:
            return values if kind != "Dropout" else self.add(Layer(name or "0", "dropout", {}, source_class=kind),
                                                               values[:1])
        if len(values) != 1:
            raise UnsupportedError(f"{module.class_name} {name!r} takes a table of {len(values)} tensors",
                                   path=self.path, fix="Only JoinTable and CAddTable take tables")
        builder = LEAVES.get(kind)
        if builder is None:
            return self.unknown(module, values, name or "0")
        return self.add(builder(self, module, name or "0"), values)

    def unknown(self, module: TorchObject, values: list[str], name: str) -> list[str]:
        weights = [key for key, value in module.fields.items() if isinstance(value, TensorRef) and value.sizes
                   and key in ("weight", "bias")]
        if weights:
            raise UnsupportedError(f"module {name!r} of class {module.class_name} holds {', '.join(weights)} "
                                   "weightport cannot map", path=self.path,
                                   fix="Supported: SpatialConvolution(MM), SpatialDilatedConvolution, "
                                       "SpatialFullConvolution, (Spatial)BatchNormalization, Linear, PReLU")
        assert self.model_ is not None
        self.model_.warn(f"module {name!r} of class {module.class_name} is carried by name only (not converted, "
                         "the torch module cannot run it)")
        return self.add(Layer(name, "other", {"op": module.class_name}, source_class=module.class_name), values)

    # -- containers ---------------------------------------------------------------------------------
    def sequential(self, module: TorchObject, values: list[str], name: str, depth: int) -> list[str]:
        for index, child in enumerate(children(module)):
            values = self.build(child, values, f"{name}.{index}" if name else str(index), depth + 1)
        return values

    def branches(self, module: TorchObject, values: list[str], name: str, depth: int) -> list[str]:
        outputs = []
        for index, child in enumerate(children(module)):
            out = self.build(child, values, f"{name}.{index}" if name else str(index), depth + 1)
            if len(out) != 1:
                raise UnsupportedError(f"branch {index} of {module.class_name} {name!r} returns a table",
                                       path=self.path, fix="Only branches returning one tensor are converted")
            outputs += out
        return outputs

    def concat(self, module: TorchObject, values: list[str], name: str, depth: int) -> list[str]:
        outputs = self.branches(module, values, name, depth)
        axis = self.channel_axis(module, "dimension")
        return self.add(Layer(f"{name}_concat" if name else "concat", "concat", {"axis": axis},
                              source_class=module.class_name), outputs)

    def join(self, module: TorchObject, values: list[str], name: str, depth: int) -> list[str]:
        axis = self.channel_axis(module, "dimension")
        return self.add(Layer(name or "0", "concat", {"axis": axis}, source_class=module.class_name), values)

    def cadd(self, module: TorchObject, values: list[str], name: str, depth: int) -> list[str]:
        return self.add(Layer(name or "0", "add", {}, source_class=module.class_name), values)

    def channel_axis(self, module: TorchObject, key: str) -> int:
        """The canonical axis (batch excluded) of a Torch7 ``dimension`` (1-based; counts the batch axis unless
        ``nInputDims`` says the batch is extra)."""
        dimension = integer(module, key, 1)
        axis = dimension - 1 if isinstance(module.get("nInputDims"), float) else dimension - 2
        if axis != 0:
            raise UnsupportedError(f"{module.class_name} on dimension {dimension} (not the channels)", path=self.path,
                                   fix="Only channel concatenation is converted")
        return axis

    # -- leaves -------------------------------------------------------------------------------------
    def convolution(self, module: TorchObject, name: str) -> Layer:
        kind = short_class(module.class_name)
        transpose = kind == "SpatialFullConvolution"
        n_in, n_out = integer(module, "nInputPlane"), integer(module, "nOutputPlane")
        groups = max(integer(module, "groups", 1), 1)
        kh, kw = integer(module, "kH"), integer(module, "kW")
        weight = module.get("weight")
        flat = isinstance(weight, TensorRef) and len(weight.sizes) == 2
        src = "o (i h w)" if flat else ("i o h w" if transpose else "o i h w")
        known = (("i", n_in // groups), ("h", kh), ("w", kw)) if flat else ()
        layer = Layer(name, "conv_transpose" if transpose else "conv", {}, source_class=module.class_name,
                      semantics_rule=TORCH7_RULE.id)
        layer.tensors["weight"] = self.tensor(name, module, "weight", src, "i o h w" if transpose else "o i h w",
                                              CORRELATION, known)
        if isinstance(module.get("bias"), TensorRef):
            layer.tensors["bias"] = self.tensor(name, module, "bias", "o", "o")
        pad_h = integer(module, "padH", integer(module, "padding"))
        pad_w = integer(module, "padW", integer(module, "padding"))
        pads = [[pad_h, pad_h], [pad_w, pad_w]]
        layer.attrs = {"rank": 2, "kernel_size": (kh, kw), "strides": (integer(module, "dH", 1), integer(module, "dW", 1)),
                       "dilations": (integer(module, "dilationH", 1), integer(module, "dilationW", 1)),
                       "padding": pads, "pads": pads, "groups": groups, "in_channels": n_in, "out_channels": n_out,
                       "data_format": "channels_first"}
        if transpose:
            layer.attrs["output_padding"] = (integer(module, "adjH"), integer(module, "adjW"))
        return layer

    def batchnorm(self, module: TorchObject, name: str) -> Layer:
        eps = number(module, "eps", 1e-5)
        layer = Layer(name, "batchnorm", {}, source_class=module.class_name)
        layer.tensors["running_mean"] = self.tensor(name, module, "running_mean", "o", "o")
        channels = layer.tensors["running_mean"].shape[0]
        if isinstance(module.get("running_var"), TensorRef):
            layer.tensors["running_var"] = self.tensor(name, module, "running_var", "o", "o")
            stored = "running_var"
        else:
            layer.tensors["running_var"] = self.tensor(name, module, "running_std", "o", "o", steps=(StdToVariance(eps),),
                                                       rule="nn before 2016 stores running_std = 1/sqrt(var + eps)")
            layer.tensors["running_var"].name = "running_var"
            stored = "running_std"
        for key, value in (("weight", 1.0), ("bias", 0.0)):
            if isinstance(module.get(key), TensorRef):
                layer.tensors[key] = self.tensor(name, module, key, "o", "o")
            else:
                layer.tensors[key] = self.constant(name, key, value, channels, "affine false")
        layer.attrs = {"epsilon": eps, "momentum": 1.0 - number(module, "momentum", 0.1), "num_features": channels,
                       "torch7_statistics": stored}
        return layer

    def linear(self, module: TorchObject, name: str) -> Layer:
        layer = Layer(name, "dense", {}, source_class=module.class_name)
        layer.tensors["weight"] = self.tensor(name, module, "weight", "o i", "o i")
        if isinstance(module.get("bias"), TensorRef):
            layer.tensors["bias"] = self.tensor(name, module, "bias", "o", "o")
        layer.attrs = {"units": layer.tensors["weight"].shape[0]}
        return layer

    def pooling(self, module: TorchObject, name: str) -> Layer:
        kind = short_class(module.class_name)
        mode = "max" if "Max" in kind else "avg"
        pad_h, pad_w = integer(module, "padH"), integer(module, "padW")
        pads = [[pad_h, pad_h], [pad_w, pad_w]]
        attrs = {"rank": 2, "kernel_size": (integer(module, "kH"), integer(module, "kW")),
                 "strides": (integer(module, "dH", 1), integer(module, "dW", 1)), "padding": pads, "pads": pads,
                 "mode": mode, "ceil_mode": bool(module.get("ceil_mode", False))}
        if mode == "avg":
            attrs["count_include_pad"] = module.get("count_include_pad", True) is not False
        return Layer(name, "pool", attrs, source_class=module.class_name)

    def activation(self, module: TorchObject, name: str) -> Layer:
        kind = short_class(module.class_name)
        return Layer(name, "activation", {"activation": ACTIVATIONS[kind]}, source_class=module.class_name)

    def threshold(self, module: TorchObject, name: str) -> Layer:
        if number(module, "threshold") != 0 or number(module, "val") != 0:
            return Layer(name, "other", {"op": "Threshold"}, source_class=module.class_name)
        return Layer(name, "activation", {"activation": "relu"}, source_class=module.class_name)

    def prelu(self, module: TorchObject, name: str) -> Layer:
        layer = Layer(name, "prelu", {}, source_class=module.class_name)
        layer.tensors["weight"] = self.tensor(name, module, "weight", "c", "c")
        return layer

    def normalize(self, module: TorchObject, name: str) -> Layer:
        """``nn.Normalize(p, eps)``: ``x / (sum(|x|^p) + eps)^(1/p)`` over the features (eps inside the root, as
        Torch7 computes it; default eps 1e-10); the infinity norm is carried by name only."""
        p = number(module, "p", 2.0)
        if not math.isfinite(p) or p <= 0:
            return Layer(name, "other", {"op": f"{module.class_name} p={p:g}"}, source_class=module.class_name)
        return Layer(name, "normalize", {"p": p, "eps": number(module, "eps", 1e-10), "axis": 1},
                     source_class=module.class_name)

    def log_softmax(self, module: TorchObject, name: str) -> Layer:
        """``nn.LogSoftMax``: log-softmax over the features (the channels of a map)."""
        return Layer(name, "softmax", {"axis": 1, "log": True}, source_class=module.class_name)

    def view(self, module: TorchObject, name: str) -> Layer:
        """``View(n)`` / ``Reshape(n)`` of a map to one dimension: a C, H, W flatten."""
        size = module.get("size")
        count = getattr(size, "count", None)
        if count == 1:
            return Layer(name, "flatten", {"flatten_order": "chw"}, source_class=module.class_name)
        return Layer(name, "other", {"op": module.class_name}, source_class=module.class_name)


CONTAINERS: dict[str, Callable[..., list[str]]] = {
    "Sequential": Torch7Reader.sequential, "Concat": Torch7Reader.concat, "ConcatTable": Torch7Reader.branches,
    "JoinTable": Torch7Reader.join, "CAddTable": Torch7Reader.cadd,
}
LEAVES: dict[str, Callable[[Torch7Reader, TorchObject, str], Layer]] = {
    "SpatialConvolution": Torch7Reader.convolution, "SpatialConvolutionMM": Torch7Reader.convolution,
    "SpatialDilatedConvolution": Torch7Reader.convolution, "SpatialFullConvolution": Torch7Reader.convolution,
    "SpatialBatchNormalization": Torch7Reader.batchnorm, "BatchNormalization": Torch7Reader.batchnorm,
    "Linear": Torch7Reader.linear, "SpatialMaxPooling": Torch7Reader.pooling,
    "SpatialAveragePooling": Torch7Reader.pooling, "ReLU": Torch7Reader.threshold, "Threshold": Torch7Reader.threshold,
    "Tanh": Torch7Reader.activation, "Sigmoid": Torch7Reader.activation, "SoftMax": Torch7Reader.activation,
    "PReLU": Torch7Reader.prelu, "View": Torch7Reader.view, "Reshape": Torch7Reader.view,
    "Normalize": Torch7Reader.normalize, "LogSoftMax": Torch7Reader.log_softmax,
}


def beside(path: str) -> str | None:
    """``NAME.spec.json`` beside ``NAME.t7``, when there is one."""
    candidate = os.path.splitext(path)[0] + ".spec.json"
    return candidate if os.path.isfile(candidate) else None


def input_shape(spec: str | None, path: str) -> tuple[int, ...] | None:
    """One sample's input shape from ``--spec FILE`` (JSON ``{"input_shape": [C, H, W]}``), or None."""
    if not spec:
        return None
    require_regular_file(spec)
    with open(spec, "rb") as handle:
        text = handle.read(1 << 16)
    what = f"spec {os.path.basename(spec)}"
    value = parse_json(text, path, what)
    shape = value.get("input_shape") if isinstance(value, dict) else None
    if not isinstance(shape, list) or not shape or not all(type(n) is int and 0 < n < 1 << 20 for n in shape):
        raise UsageError(f"{what}: a .t7 file's spec must be JSON {{\"input_shape\": [C, H, W]}} of positive sizes",
                         path=path, fix="Give one sample's shape, without the batch")
    return tuple(shape)


def read(path: str, options: ReadOptions) -> Model:
    """Read a Torch7 .t7 model into the canonical model (tensors stay in the memory-mapped file until loaded)."""
    try:
        return Torch7Reader(path, options).model()
    except WeightportError as error:
        raise error.with_path(path)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError, RecursionError) as error:
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise BadInputError(f"Torch7 model not understood ({type(error).__name__}: {first})", path=path,
                            fix="The model is damaged or uses a construct weightport does not read") from None
