"""A runnable PyTorch module built from the canonical graph (for validation and the demo).

The module is made of standard ``torch.nn`` layers named after the canonical
layers, so its ``state_dict`` keys are exactly the torch target's keys and a
converted file loads with ``load_state_dict(strict=True)``.  Inputs and
outputs are channels-first (the canonical convention); :func:`to_canonical_input`
and :func:`from_canonical_output` move a source's channels-last arrays across.

torch is imported only when this module is imported.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weightport.core.dtypes import numpy_to_tensor
from weightport.core.errors import UnsupportedError
from weightport.core.layout import Layout, relayout
from weightport.core.model import Layer, Model
from weightport.core.options import WriteOptions
from weightport.core.plan import canonical_plan, refuse_for_torch
from weightport.core.rules import hard_sigmoid_coefficients
from weightport.core.shapes import canonical_concat_axis
from weightport.formats.torch import caffe_ops, onnx_ops

ACTIVATIONS = {
    None: lambda x: x, "linear": lambda x: x, "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "elu": F.elu, "selu": F.selu, "softplus": F.softplus, "softsign": F.softsign,
    "swish": F.silu, "silu": F.silu, "gelu": F.gelu, "relu6": F.relu6,
    "exponential": torch.exp,
}
ONNX_HARD_SIGMOID = (0.2, 0.5)  # HardSigmoid's default alpha, beta (onnx/defs/math/defs.cc)


def activation(name: Any, channel_axis: int = 1, model: Model | None = None):
    """A torch function for a Keras activation name (softmax over the channel axis).  ``hard_sigmoid`` is
    the source's own: ``clip(alpha x + beta, 0, 1)`` with Keras 1/2's or Keras 3's coefficients
    (:func:`weightport.core.rules.hard_sigmoid_coefficients`), ONNX's defaults for an ONNX source."""
    if isinstance(name, dict):
        name = name.get("class_name", name.get("config", {}).get("name"))
    if name == "softmax":
        return lambda x: F.softmax(x, dim=channel_axis if x.dim() > 2 else -1)
    if name == "hard_sigmoid":
        if model is None:
            raise UnsupportedError("hard_sigmoid without its source: Keras 1/2 and Keras 3 define it differently")
        alpha, beta = ONNX_HARD_SIGMOID if model.source.format == "onnx" else hard_sigmoid_coefficients(model)
        return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name not in ACTIVATIONS:
        raise UnsupportedError(f"activation {name!r} has no PyTorch equivalent here",
                               fix="Validate this layer in the source framework only")
    return ACTIVATIONS[name]


def pre_padded(module: nn.Module, pads: list[list[int]], value: float = 0.0) -> nn.Module:
    """``module`` with explicit per-side input padding (TensorFlow 'same' pads the odd pixel at the end).

    A forward pre-hook keeps the module's own state_dict keys.
    """
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
    if any(flat):
        module.register_forward_pre_hook(lambda _m, args: (F.pad(args[0], flat, value=value),) + args[1:])
    return module


def cropped(module: nn.Module, pads: list[list[int]]) -> nn.Module:
    """``module`` whose output is cropped by per-side pads (a transposed conv's 'same' padding)."""
    def crop(_m: nn.Module, _args: Any, y: torch.Tensor) -> torch.Tensor:
        index = [slice(None), slice(None)] + [slice(b, y.shape[2 + k] - a) for k, (b, a) in enumerate(pads)]
        return y[tuple(index)]
    if any(p for pair in pads for p in pair):
        module.register_forward_hook(crop)
    return module


class ElementwisePRelu(torch.autograd.Function):
    """``x`` where ``x >= 0``, else ``slope * x``; ``slope`` broadcasts against x without its batch axis:
    (C,), (C, 1, 1) or one slope per element (C, H, W).  torch's own ``F.prelu`` takes only (C,), so this
    runs ``torch.where`` and exports as one ONNX ``PRelu`` node, whose slope may have any of these shapes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, slope * x)

    @staticmethod
    def symbolic(g: Any, x: Any, slope: Any) -> Any:
        return g.op("PRelu", x, slope)


class PReluSlope(nn.Module):
    """Holds a PReLU slope as ``weight``: (C,) per channel (torch.nn.PReLU's layout) or one per element
    (C, *spatial); a per-channel slope meets a (batch, C, *spatial) map on its channel axis."""

    def __init__(self, shape: tuple[int, ...], channels_axis: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
        self.channels_axis = channels_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.weight
        if slope.dim() == 1 and self.channels_axis == 1 and x.dim() > 2:
            slope = slope.reshape((-1,) + (1,) * (x.dim() - 2))
        return ElementwisePRelu.apply(x, slope)


class Separable(nn.Sequential):
    """Depthwise conv then pointwise conv, with keys ``depthwise.weight``, ``pointwise.weight``/``bias``."""

    def __init__(self, depthwise: nn.Module, pointwise: nn.Module) -> None:
        super().__init__()
        self.depthwise = depthwise
        self.pointwise = pointwise


def keras_recurrent(rnn: nn.Module, return_sequences: bool, go_backwards: bool,
                    directions_apart: bool = False) -> nn.Module:
    """A batch-first torch LSTM/GRU returning the sequence or the last output, as Keras does.

    A bidirectional RNN's last output is the forward direction's last step and
    the backward direction's first step (it has then seen the whole sequence).
    With ``directions_apart`` (an ONNX LSTM/GRU, whose ``Y`` is (seq, directions,
    batch, hidden)) the sequence is (batch, seq, directions, hidden) instead of
    the directions concatenated on the last axis.
    """
    if go_backwards:
        rnn.register_forward_pre_hook(lambda _m, args: (torch.flip(args[0], dims=[1]),) + args[1:])

    def last_output(_m: nn.Module, _a: Any, out: Any) -> torch.Tensor:
        sequence = out[0]
        if directions_apart:
            return sequence.reshape(sequence.shape[0], sequence.shape[1], -1, rnn.hidden_size)
        if return_sequences:
            return sequence
        if rnn.bidirectional:
            half = rnn.hidden_size
            return torch.cat([sequence[:, -1, :half], sequence[:, 0, half:]], dim=1)
        return sequence[:, -1]
    rnn.register_forward_hook(last_output)
    return rnn


def conv_module(layer: Layer) -> nn.Module:
    """The torch module of a conv, depthwise, separable or transposed conv layer."""
    a = layer.attrs
    rank = a["rank"]
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    pads = a.get("pads") or [[0, 0]] * rank
    if layer.kind == "conv_transpose":
        transpose = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[rank]
        inner = transpose(a["in_channels"], a["out_channels"], a["kernel_size"], a["strides"],
                          output_padding=tuple(a.get("output_padding") or (0,) * rank),
                          groups=a.get("groups", 1), bias="bias" in layer.tensors, dilation=a["dilations"])
        return cropped(inner, pads)
    if layer.kind == "separable":
        channels = a["in_channels"]
        depthwise = conv(channels, channels * a["depth_multiplier"], a["kernel_size"], a["strides"],
                         dilation=a["dilations"], groups=channels, bias=False)
        pointwise = conv(channels * a["depth_multiplier"], a["out_channels"], 1,
                         bias="pointwise.bias" in layer.tensors)
        return pre_padded(Separable(depthwise, pointwise), pads)
    inner = conv(a["in_channels"], a["out_channels"], a["kernel_size"], a["strides"], dilation=a["dilations"],
                 groups=a.get("groups", 1), bias="bias" in layer.tensors)
    return pre_padded(inner, pads)


def pool_function(layer: Layer):
    a = layer.attrs
    rank = a["rank"]
    pads = a.get("pads") or [[0, 0]] * rank
    flat = [p for pair in reversed(pads) for p in pair]
    if a.get("ceil_mode") or a.get("count_include_pad"):
        return ceil_pool_function(layer)
    if a["mode"] == "max":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return lambda x: pool(F.pad(x, flat, value=-math.inf) if any(flat) else x, a["kernel_size"], a["strides"])
    # count_include_pad=False: the same in torch (nothing is padded here), and what the traced ONNX node says, so
    # onnxruntime, which runs a window hanging past a too-small input (a 3x2 window on a 1x2 map gives one value),
    # averages only the input's own values, as the source's AveragePool (count_include_pad 0) does
    avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]

    def pool(x: torch.Tensor, kernel: Any, strides: Any) -> torch.Tensor:
        return avg(x, kernel, strides, count_include_pad=False)

    def average(x: torch.Tensor) -> torch.Tensor:
        if not any(flat):
            return pool(x, a["kernel_size"], a["strides"])
        ones = torch.ones_like(x[:1, :1])
        total = pool(F.pad(x, flat), a["kernel_size"], a["strides"])
        count = pool(F.pad(ones, flat), a["kernel_size"], a["strides"])
        return total / count  # TensorFlow excludes padding from the average
    return average


def ceil_pool_function(layer: Layer):
    """Caffe / Torch7 pooling: symmetric pads, output size rounded up (``ceil_mode``, the last window kept only
    when it starts inside the input or its left padding) and an average that counts the padding
    (``count_include_pad``) but not the part of a window past the padded input: torch's own rule, identical."""
    a = layer.attrs
    rank = a["rank"]
    pads = a.get("pads") or [[0, 0]] * rank
    if any(before != after for before, after in pads):
        raise UnsupportedError(f"layer {layer.name!r}: ceil-mode pooling with asymmetric pads {pads}")
    padding = tuple(before for before, _ in pads)
    ceil = bool(a.get("ceil_mode"))
    if a["mode"] == "max":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return lambda x: pool(x, a["kernel_size"], a["strides"], padding, ceil_mode=ceil)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    include = bool(a.get("count_include_pad"))
    return lambda x: pool(x, a["kernel_size"], a["strides"], padding, ceil_mode=ceil, count_include_pad=include)


MAP_KINDS = ("conv", "depthwise", "separable", "conv_transpose", "pool", "padding", "cropping", "upsampling",
             "global_pool")
SEQUENCE_CONSUMERS = ("lstm", "gru")
MAP_PRESERVING = ("input", "activation", "batchnorm", "layernorm", "dropout", "add", "concat", "multiply", "prelu")


def input_kind(model: Model) -> str:
    """``map`` when the model's input is a channels-first feature map in the canonical module, else ``seq``."""
    first = model.layers[0] if model.layers else None
    shape = first.output_shape if first is not None else None
    if shape is not None and len(shape) >= 2 and spatial_input(model) and model.layers[1:2] and \
            model.layers[1].kind not in ("embedding", "lstm", "gru", "dense"):
        return "map"
    return "seq"


ValueKind = Callable[[Layer, str], str]
OUTPUT_KINDS: dict[str, ValueKind] = {}


def output_kind(*kinds: str) -> Callable[[ValueKind], ValueKind]:
    """Register what a layer kind outputs, given the kind of value feeding it (``map``, ``seq`` or ``flat``).
    A kind without an entry outputs ``flat``."""
    def register(rule: ValueKind) -> ValueKind:
        for kind in kinds:
            OUTPUT_KINDS[kind] = rule
        return rule
    return register


output_kind(*MAP_KINDS)(lambda layer, feeding: "map")
output_kind(*MAP_PRESERVING)(lambda layer, feeding: feeding)


@output_kind("global_pool")
def global_pool_output(layer: Layer, feeding: str) -> str:
    return "map" if layer.attrs.get("keepdims") else "flat"


@output_kind("lstm", "gru")
def recurrent_output(layer: Layer, feeding: str) -> str:
    return "seq" if layer.attrs.get("return_sequences") else "flat"


@output_kind("embedding", "dense")
def per_step_output(layer: Layer, feeding: str) -> str:
    return "seq" if feeding == "seq" or layer.kind == "embedding" else "flat"


def value_kinds(model: Model) -> dict[str, str]:
    """What each layer's output is in the canonical module: ``map`` (batch, channels, spatial...),
    ``seq`` (batch, time, features) or ``flat`` (batch, features)."""
    kinds: dict[str, str] = {}
    previous = input_kind(model)
    for position, layer in enumerate(model.layers):
        names = layer.inputs or ([model.layers[position - 1].name] if position else [])
        feeding = kinds.get(names[0], previous) if names else previous
        if layer.kind == "input":
            kind = input_kind(model)
        else:
            kind = OUTPUT_KINDS.get(layer.kind, lambda _layer, _feeding: "flat")(layer, feeding)
        kinds[layer.name] = previous = kind
    return kinds


class CanonicalModule(nn.Module):
    """Runs the canonical graph with standard torch layers (channels-first tensors)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model
        self.post: dict[str, Any] = {}
        self.layer_modules: dict[str, nn.Module] = {}
        self.also_return: list[str] = []  # layers whose outputs forward gives after the model's output
        self.returns: list[str] = []  # when set: the layers whose outputs forward gives, in this order (a traced
        # graph's outputs in its source graph's order), instead of the model's output
        kinds = value_kinds(model)
        for layer in model.layers:
            module = self.module_for(layer)
            if module is not None:
                self.attach(layer.name, module)
            act = layer.attrs.get("activation") if layer.kind in ("conv", "conv_transpose", "depthwise",
                                                                  "separable", "dense", "activation") else None
            on_sequence = kinds.get(layer.name) == "seq" or layer.attrs.get("on_sequence")
            self.post[layer.name] = activation(act, -1 if on_sequence else 1, model=model)  # softmax: features

    def attach(self, name: str, module: nn.Module) -> None:
        """Register ``module`` under a possibly dotted name (``features.0``), so state_dict keys match."""
        parent: nn.Module = self
        parts = name.split(".")
        for part in parts[:-1]:
            if part not in parent._modules:
                parent._modules[part] = nn.Module()  # a layer name may equal an attribute (``model``, ``post``)
            parent = parent._modules[part]
        parent._modules[parts[-1]] = module
        self.layer_modules[name] = module

    def module_for(self, layer: Layer) -> nn.Module | None:
        """The layer's weighted torch module (from :data:`BUILDERS`), or None for a weightless layer."""
        build = BUILDERS.get(layer.kind)
        return build(layer, self.model) if build is not None else None

    def forward(self, *xs: torch.Tensor) -> Any:
        """The model's output given one tensor per ``input`` layer, in the model's order (a graph's extra
        inputs, such as an RNN's initial state, after the first); every layer's output is kept in ``values``.
        Post-processing layers that are not ported (SSD's PriorBox, DetectionOutput: ``attrs["post_processing"]``)
        and what they feed are not run; a model ending in them raises UnsupportedError after running the rest."""
        entries = self.model.input_layers()
        if len(xs) != max(len(entries), 1):
            raise UnsupportedError(f"the model takes {len(entries)} inputs ({', '.join(l.name for l in entries)}), "
                                   f"given {len(xs)}", fix="Give one array for each input of the model")
        fed = {layer.name: x for layer, x in zip(entries, xs)}
        values: dict[str, torch.Tensor] = {}
        self.values = values  # every layer's output of the last call, for naming a first divergence
        masks: dict[str, torch.Tensor] = {}  # an Embedding(mask_zero=True)'s mask: its input indices != 0
        kinds = value_kinds(self.model)
        previous = xs[0]
        not_run = not_ported(self.model)
        for position, layer in enumerate(self.model.layers):
            names = layer.inputs or ([self.model.layers[position - 1].name] if position else [])
            if layer.name in not_run:
                continue
            picks = layer.attrs.get("input_indices") or [0] * len(names)
            inputs = [output_of(values[n], k) for n, k in zip(names, picks)] if names else [output_of(previous, 0)]
            if layer.name in fed:
                inputs = [fed[layer.name]]
            feeding = kinds.get(names[0]) if names else input_kind(self.model)
            if layer.kind in SEQUENCE_CONSUMERS and feeding == "map" and inputs[0].dim() == 3:
                inputs[0] = inputs[0].transpose(1, 2)  # (batch, channels, time) -> (batch, time, features)
            elif layer.kind in MAP_KINDS and feeding == "seq" and inputs[0].dim() == 3:
                inputs[0] = inputs[0].transpose(1, 2)  # (batch, time, features) -> (batch, channels, time)
            if layer.attrs.get("mask_zero"):
                masks[layer.name] = inputs[0] != 0
            masked_by = getattr(self.layer_modules.get(layer.name), "masked_by", None)
            if masked_by is not None:
                previous = self.post[layer.name](self.layer_modules[layer.name](inputs[0], masks[masked_by]))
            else:
                previous = self.post[layer.name](self.apply(layer, inputs))
            values[layer.name] = previous
        if self.model.layers and self.model.layers[-1].name in not_run:
            first = next(layer for layer in self.model.layers if layer.attrs.get("post_processing"))
            raise UnsupportedError(f"the model ends in post-processing that is not ported ({first.name}, "
                                   f"{first.source_class}); the converted model's outputs are "
                                   f"{', '.join(ported_outputs(self.model))}",
                                   fix="Compare those outputs, and run the post-processing from its recorded "
                                       "parameters")
        if self.returns:
            return tuple(output_of(values[name], 0) for name in self.returns)
        declared = next(iter((self.model.source.details.get("outputs") or {}).values()),
                        self.model.source.details.get("first_output"))
        # an ONNX graph's first declared output (what onnxruntime gives first; PicoDet declares its outputs
        # in another order than its nodes), else the last layer's; a layer of several outputs: its first
        last = output_of(values[declared] if declared in values else previous, 0)
        return (last,) + tuple(values[name] for name in self.also_return) if self.also_return else last

    def apply(self, layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
        """One layer's output: its weighted module, or the weightless op registered in :data:`RUNS`."""
        if "output_of" in layer.attrs:  # another output of a layer module (an RNN's final states)
            return self.layer_modules[layer.attrs["output_of"]].extra_outputs[layer.attrs["output_index"] - 1]
        if layer.name in self.layer_modules:
            module = self.layer_modules[layer.name]
            return module(*inputs) if getattr(module, "takes_all_inputs", False) else module(inputs[0])
        run = RUNS.get(layer.kind)
        if run is None:
            raise UnsupportedError(f"layer {layer.name!r} of kind {layer.kind} ({layer.source_class}) cannot be "
                                   "run in torch", fix="Validate this model layer by layer instead")
        return run(layer, inputs)


def not_ported(model: Model) -> set[str]:
    """Names of the post-processing layers that are not ported (SSD's PriorBox, DetectionOutput:
    ``attrs["post_processing"]``) and of every layer fed by one: the canonical module does not run them."""
    names: set[str] = set()
    for layer in model.layers:
        if layer.attrs.get("post_processing") or any(name in names for name in layer.inputs):
            names.add(layer.name)
    return names


def ported_outputs(model: Model) -> list[str]:
    """The layers whose outputs only the not-ported post-processing reads: the converted model's outputs
    (an SSD's box offsets and class scores); empty when everything is ported."""
    skipped = not_ported(model)
    used = {name for layer in model.layers if layer.name not in skipped for name in layer.inputs}
    return sorted({name for layer in model.layers if layer.name in skipped for name in layer.inputs
                   if name not in skipped and name not in used})


def output_of(value: Any, index: int) -> torch.Tensor:
    """Output ``index`` of a layer's value: a tensor, or the tuple of a layer with several outputs (a Keras
    Bidirectional with ``merge_mode=None``: forward, backward)."""
    return value[index] if isinstance(value, tuple) else value


Builder = Callable[[Layer, Model], nn.Module]
BUILDERS: dict[str, Builder] = {}
Run = Callable[[Layer, list[torch.Tensor]], torch.Tensor]
RUNS: dict[str, Run] = {}


def builds(*kinds: str) -> Callable[[Builder], Builder]:
    """Register the torch module builder of weighted layer kinds (its parameters are the layer's tensors)."""
    def register(build: Builder) -> Builder:
        for kind in kinds:
            BUILDERS[kind] = build
        return build
    return register


def runs(*kinds: str) -> Callable[[Run], Run]:
    """Register the forward function of weightless layer kinds: ``run(layer, inputs) -> output``, every
    tensor channels-first and batch-first."""
    def register(run: Run) -> Run:
        for kind in kinds:
            RUNS[kind] = run
        return run
    return register


builds("conv", "depthwise", "separable", "conv_transpose")(lambda layer, model: conv_module(layer))


@builds("dense")
def dense_module(layer: Layer, model: Model) -> nn.Module:
    weight = layer.tensors["weight"]
    return nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in layer.tensors)


class AnyRankBatchNorm(nn.BatchNorm1d):
    """Inference batch normalization of an (N, C, ...) input of any rank, for a graph that records no output
    shape (a weights-only source, an ONNX graph with dynamic sizes): the rank is the input's, known only when
    it runs.  Same parameters and state_dict keys as ``torch.nn.BatchNorm1d/2d/3d``; F.batch_norm normalizes
    over axis 1 whatever the rank."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank 2 or more (got {input.dim()}D input)")


@builds("batchnorm")
def batchnorm_module(layer: Layer, model: Model) -> nn.Module:
    """torch's BatchNorm of the layer's rank where its output shape is recorded in full, else
    :class:`AnyRankBatchNorm`."""
    a = layer.attrs
    shape = layer.output_shape
    known = shape is not None and all(n is not None for n in shape) and len(shape) <= 4
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}[len(shape)] if known \
        else AnyRankBatchNorm  # type: ignore[arg-type]
    return bn(a["num_features"], eps=a["epsilon"], momentum=1.0 - a["momentum"]).eval()


class KerasLayerNorm(nn.LayerNorm):
    """Keras ``LayerNormalization`` over one axis: ``torch.nn.LayerNorm`` (``weight`` = gamma, ``bias`` = beta,
    both (F,)) over the last axis, the normalised axis moved there and back.  ``axis`` is Keras's (batch 0,
    negative from the end) in Keras's channels-last order; on a channels-first map the canonical axis is
    found at run time from the input's rank (:func:`weightport.core.shapes.canonical_concat_axis`)."""

    def __init__(self, features: int, epsilon: float, axis: int, on_map: bool, data_format: str | None) -> None:
        super().__init__(features, eps=epsilon)
        self.keras_axis, self.on_map, self.data_format = axis, on_map, data_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 1 + canonical_concat_axis(self.keras_axis, x.dim() - 1, self.data_format, not self.on_map)
        last = x.dim() - 1
        if dim == last:
            return super().forward(x)
        order = [k for k in range(x.dim()) if k != dim] + [dim]  # explicit axes: ONNX's Transpose takes no -1
        back = [order.index(k) for k in range(x.dim())]
        return super().forward(x.permute(order)).permute(back)


@builds("layernorm")
def layernorm_module(layer: Layer, model: Model) -> nn.Module:
    a = layer.attrs
    feeding = model.input_names(layer)
    on_map = bool(feeding) and value_kinds(model).get(feeding[0]) == "map"
    return KerasLayerNorm(int(a["num_features"]), float(a["epsilon"]), int(a.get("axis", -1)), on_map,
                          model.source.details.get("data_format"))


@builds("embedding")
def embedding_module(layer: Layer, model: Model) -> nn.Module:
    return nn.Embedding(*layer.tensors["weight"].shape)  # sized by its table (an ONNX Gather records no sizes)


@builds("lstm", "gru")
def recurrent_module(layer: Layer, model: Model) -> nn.Module:
    a = layer.attrs
    weight = layer.tensors["weight_ih_l0"]
    refuse_for_torch(layer)
    merge = a.get("merge_mode", "concat")
    if a.get("bidirectional") and merge not in ("concat", "onnx"):
        raise UnsupportedError(f"layer {layer.name!r}: Bidirectional merge_mode {merge!r}")
    rnn = (nn.LSTM if layer.kind == "lstm" else nn.GRU)(weight.shape[1], a["units"], batch_first=True,
                                                        bidirectional=bool(a.get("bidirectional")),
                                                        num_layers=int(a.get("num_layers", 1)))
    return keras_recurrent(rnn, a["return_sequences"], a["go_backwards"],
                           directions_apart=bool(a.get("bidirectional")) and merge == "onnx")


@builds("prelu")
def prelu_module(layer: Layer, model: Model) -> nn.Module:
    channels_axis = 1 if value_kinds(model).get(layer.name) == "map" else -1
    return PReluSlope(layer.tensors["weight"].shape, channels_axis)


runs("input", "dropout")(lambda layer, inputs: inputs[0])
runs("activation")(lambda layer, inputs: inputs[0])  # the activation itself is the layer's ``post``
runs("flatten")(lambda layer, inputs: torch.flatten(inputs[0], 1))
runs("add")(lambda layer, inputs: sum(inputs[1:], inputs[0]))
runs("pool")(lambda layer, inputs: pool_function(layer)(inputs[0]))


@runs("multiply")
def multiply(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    out = inputs[0]
    for other in inputs[1:]:
        out = out * other
    return out


@runs("concat")
def concat(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    axis = layer.attrs.get("axis", 0)  # without the batch axis; a negative axis counts from the end
    return torch.cat(inputs, dim=1 + axis if axis >= 0 else axis)


@runs("global_pool")
def global_pool(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    x = inputs[0]
    dims = list(range(2, x.dim()))
    out = x.amax(dim=dims, keepdim=True) if layer.attrs["mode"] == "max" else x.mean(dim=dims, keepdim=True)
    return out if layer.attrs.get("keepdims") else torch.flatten(out, 1)


@runs("padding")
def padding(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    return F.pad(inputs[0], [p for pair in reversed(layer.attrs["pads"]) for p in pair])


@runs("cropping")
def cropping(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    x = inputs[0]
    index = [slice(None), slice(None)] + [slice(begin, x.shape[2 + k] - end)
                                          for k, (begin, end) in enumerate(layer.attrs["crops"])]
    return x[tuple(index)]


@runs("upsampling")
def upsampling(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    return F.interpolate(inputs[0], scale_factor=tuple(float(s) for s in layer.attrs["size"]), mode="nearest")


def canonical_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """The torch target's state_dict straight from the canonical tensors."""
    return {p.key: numpy_to_tensor(torch, p.load()) for p in canonical_plan(model, WriteOptions()).tensors}


def spatial_pattern(rank: int) -> tuple[str, str]:
    """(channels-last, channels-first) batch patterns for a tensor with ``rank`` spatial axes."""
    spatial = ["d", "h", "w"][3 - rank:]
    return " ".join(["n"] + spatial + ["c"]), " ".join(["n", "c"] + spatial)


def onnx_rnn_input(model: Model) -> bool:
    """True when an ONNX graph's input goes straight into an LSTM/GRU, which takes (seq, batch, features)."""
    first = model.layers[0] if model.layers else None
    return (model.source.format == "onnx" and first is not None and first.kind == "input"
            and any(layer.kind in SEQUENCE_CONSUMERS and first.name in layer.inputs for layer in model.layers))


def onnx_rnn_output(model: Model) -> bool:
    """True when an ONNX graph ends with an LSTM/GRU, whose ``Y`` is (seq, directions, batch, hidden)."""
    return model.source.format == "onnx" and bool(model.layers) and model.layers[-1].kind in SEQUENCE_CONSUMERS


def to_canonical_input(array: np.ndarray, model: Model) -> np.ndarray:
    """A source-layout input batch as the canonical module takes it: channels-first, batch-first
    ((seq, batch, features) of an ONNX LSTM/GRU input becomes (batch, seq, features))."""
    if onnx_rnn_input(model) and array.ndim == 3:
        return relayout(array, Layout("t n f"), Layout("n t f"))
    if (model.source.details.get("data_format") == "channels_last" and array.ndim >= 3
            and input_kind(model) == "map"):
        last, channels_first = spatial_pattern(array.ndim - 2)
        return relayout(array, Layout(last), Layout(channels_first))
    return array


def canonical_feeds(x: np.ndarray | tuple[np.ndarray, ...], model: Model) -> list[np.ndarray]:
    """One array per input layer as :meth:`CanonicalModule.forward` takes them, from the source-layout
    input ``x`` (a tuple for a model of several inputs): the first moved by :func:`to_canonical_input`, the
    others as given (an ONNX graph's extra inputs are channels-first already; an RNN's initial state is
    (directions, batch, hidden) in ONNX and torch alike)."""
    arrays = list(x) if isinstance(x, (tuple, list)) else [x]
    return [to_canonical_input(arrays[0], model)] + arrays[1:]


def from_canonical_output(array: np.ndarray, model: Model) -> np.ndarray:
    """A canonical (channels-first, batch-first) output batch in the source's layout; an ONNX LSTM/GRU's
    (batch, seq, [directions,] hidden) becomes its ``Y``, (seq, directions, batch, hidden)."""
    if onnx_rnn_output(model) and array.ndim in (3, 4):
        apart = array if array.ndim == 4 else array[:, :, np.newaxis, :]
        return relayout(apart, Layout("n t d u"), Layout("t d n u"))
    if (model.source.details.get("data_format") == "channels_last" and array.ndim >= 3
            and value_kinds(model).get(model.layers[-1].name) == "map"):
        last, channels_first = spatial_pattern(array.ndim - 2)
        return relayout(array, Layout(channels_first), Layout(last))
    return array


def spatial_input(model: Model) -> bool:
    return any(layer.kind in ("conv", "depthwise", "separable", "conv_transpose", "pool", "global_pool")
               for layer in model.layers)


onnx_ops.register(sys.modules[__name__])  # the weightless ONNX ops of whole real graphs
caffe_ops.register(sys.modules[__name__])  # Caffe / Torch7 weightless layers (LRN, Power, Reshape, Slice, ...)
from weightport.formats.torch.keras_ops import register as register_keras_ops  # noqa: E402
register_keras_ops(BUILDERS, RUNS, OUTPUT_KINDS)  # Keras functional layers (formats/torch/keras_ops.py)
