"""Keras layer classes -> canonical kinds, attributes and tensor mappings.

Shared by the Keras readers (and the Keras writer): for each canonical
parameter, which Keras variable holds it and in which layout.  Keras 1 names
(``nb_filter``, ``subsample``, ``border_mode``, ``dim_ordering``) are
normalized to Keras 2/3 names here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from weightport.core.errors import UnsupportedError
from weightport.core.layout import CANONICAL_PATTERNS, CORRELATION, Layout, conv_role
from weightport.core.model import ROOT_LAYER, Layer, Model, is_bidirectional
from weightport.core.options import WriteOptions
from weightport.core.plan import Plan, PlannedTensor
from weightport.core.shapes import flatten_patterns, flattened_map_shape
from weightport.core.steps import Relayout, ReorderBlocks
from weightport.formats.keras.patterns import KERAS_PATTERNS, KERAS_TH_PATTERNS

CONV_KINDS: dict[str, tuple[str, int]] = {}
for _rank in (1, 2, 3):
    for _cls in (f"Conv{_rank}D", f"Convolution{_rank}D", f"AtrousConvolution{_rank}D", f"AtrousConv{_rank}D"):
        CONV_KINDS[_cls] = ("conv", _rank)
    for _cls in (f"Conv{_rank}DTranspose", f"Convolution{_rank}DTranspose", f"Deconvolution{_rank}D",
                 f"Deconv{_rank}D"):
        CONV_KINDS[_cls] = ("conv_transpose", _rank)
    CONV_KINDS[f"DepthwiseConv{_rank}D"] = ("depthwise", _rank)
    for _cls in (f"SeparableConv{_rank}D", f"SeparableConvolution{_rank}D"):
        CONV_KINDS[_cls] = ("separable", _rank)

WEIGHTLESS: dict[str, str] = {
    "InputLayer": "input", "Activation": "activation", "ReLU": "activation", "LeakyReLU": "activation",
    "ELU": "activation", "Softmax": "activation", "ThresholdedReLU": "activation",
    "Dropout": "dropout", "SpatialDropout1D": "dropout", "SpatialDropout2D": "dropout",
    "SpatialDropout3D": "dropout", "GaussianNoise": "dropout", "GaussianDropout": "dropout",
    "AlphaDropout": "dropout", "Flatten": "flatten", "Reshape": "reshape", "Permute": "permute",
    "Add": "add", "Concatenate": "concat", "Merge": "concat", "Multiply": "multiply",
    "Average": "average", "Maximum": "maximum", "Minimum": "minimum", "Subtract": "subtract",
    "RepeatVector": "repeat_vector", "Dot": "dot", "NotEqual": "not_equal", "Lambda": "other", "Masking": "other",
    "Rescaling": "other", "Normalization": "other",
}
for _rank in (1, 2, 3):
    for _mode, _names in (("max", ("MaxPooling", "MaxPool")), ("avg", ("AveragePooling", "AvgPool"))):
        for _n in _names:
            WEIGHTLESS[f"{_n}{_rank}D"] = "pool"
            WEIGHTLESS[f"Global{_n}{_rank}D"] = "global_pool"
    WEIGHTLESS[f"ZeroPadding{_rank}D"] = "padding"
    WEIGHTLESS[f"Cropping{_rank}D"] = "cropping"
    WEIGHTLESS[f"UpSampling{_rank}D"] = "upsampling"

WEIGHTED_SIMPLE = {
    "Dense": "dense", "BatchNormalization": "batchnorm", "Embedding": "embedding", "PReLU": "prelu",
    "LSTM": "lstm", "GRU": "gru", "CuDNNLSTM": "lstm", "CuDNNGRU": "gru", "LayerNormalization": "layernorm",
}


def snake_case(class_name: str) -> str:
    """Keras 3's name for a layer's group, from its class (keras/src/utils/naming.py ``to_snake_case``):
    ``AttentionWeightedAverage`` -> ``attention_weighted_average``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def as_tuple(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),) * rank


def keras1_dim_ordering(config: dict[str, Any]) -> str | None:
    ordering = config.get("dim_ordering")
    if ordering in ("th", "tf"):
        return "channels_first" if ordering == "th" else "channels_last"
    return None


def data_format(config: dict[str, Any], default: str, rank: int | None = None) -> str:
    """A layer's data format; Keras 1-D layers without one are channels-last (steps, features)."""
    found = keras1_dim_ordering(config) or config.get("data_format")
    if not found and rank == 1:
        return "channels_last"
    return found or default


def conv_attrs(class_name: str, config: dict[str, Any], rank: int, default_format: str) -> dict[str, Any]:
    """Canonical attributes of a Keras convolution layer (Keras 1 names normalized)."""
    if "kernel_size" in config:
        kernel = as_tuple(config["kernel_size"], rank)
    elif rank == 1 and "filter_length" in config:
        kernel = (int(config["filter_length"]),)
    elif rank == 2 and "nb_row" in config:
        kernel = (int(config["nb_row"]), int(config["nb_col"]))
    elif rank == 3 and "kernel_dim1" in config:
        kernel = (int(config["kernel_dim1"]), int(config["kernel_dim2"]), int(config["kernel_dim3"]))
    else:
        kernel = None  # no config: taken from the kernel's shape by the reader
    strides = config.get("strides", config.get("subsample", config.get("subsample_length", 1)))
    dilation = config.get("dilation_rate", config.get("atrous_rate", 1))
    padding = config.get("padding", config.get("border_mode", "valid"))
    attrs: dict[str, Any] = {
        "rank": rank,
        "kernel_size": kernel,
        "strides": as_tuple(strides, rank),
        "dilations": as_tuple(dilation, rank),
        "padding": padding if isinstance(padding, str) else [list(p) for p in padding],
        "groups": int(config.get("groups", 1)),
        "data_format": data_format(config, default_format, rank),
        "activation": config.get("activation", "linear"),
        "use_bias": bool(config.get("use_bias", config.get("bias", True))),
    }
    filters = config.get("filters", config.get("nb_filter"))
    if filters is not None:
        attrs["filters"] = int(filters)
    if "depth_multiplier" in config:
        attrs["depth_multiplier"] = int(config["depth_multiplier"])
    if config.get("output_padding") is not None:
        attrs["output_padding"] = as_tuple(config["output_padding"], rank)
    return attrs


@dataclass(frozen=True)
class ParamMap:
    """Canonical parameter ``param`` is Keras variable ``variable`` (``a|b``: either name).

    ``role`` names the kernel role in the layout tables (None for vectors).
    """

    param: str
    variable: str
    role: str | None


def kernel_patterns(role: str, data_format: str, keras_major: int | None, ndim: int | None = None) -> tuple[str, str]:
    """(source pattern, canonical pattern) of a Keras kernel role.

    Keras 1 with dim_ordering 'th' stored convolution kernels Theano-style
    (out, in, rows, cols); every other Keras stores them channels-last.  Keras 1
    Convolution1D ran a 2-D convolution and kept its kernel 4-D:
    (filter_length, 1, input_dim, nb_filter) (keras 1.2 layers/convolutional.py).
    """
    if role == "conv1d" and ndim == 4:
        return "w 1 i o", CANONICAL_PATTERNS[role]
    if keras_major == 1 and role.startswith("conv_transpose"):
        # Keras 1 Deconvolution2D kept Convolution2D's W_shape: (nb_filter, stack, rows, cols) for 'th',
        # (rows, cols, stack, nb_filter) for 'tf' (keras 1.2 layers/convolutional.py l.425-428).
        plain = role.replace("conv_transpose", "conv")
        source = KERAS_TH_PATTERNS[plain] if data_format == "channels_first" else KERAS_PATTERNS[plain]
        return source, CANONICAL_PATTERNS[role]
    source = KERAS_PATTERNS[role]
    if keras_major == 1 and data_format == "channels_first" and role in KERAS_TH_PATTERNS and role != "dense":
        source = KERAS_TH_PATTERNS[role]
    return source, CANONICAL_PATTERNS[role]


def conv_params(kind: str, rank: int, use_bias: bool) -> list[ParamMap]:
    if kind == "separable":
        params = [ParamMap("depthwise.weight", "depthwise_kernel", conv_role("depthwise", rank)),
                  ParamMap("pointwise.weight", "pointwise_kernel", conv_role("pointwise", rank))]
        return params + ([ParamMap("pointwise.bias", "bias", None)] if use_bias else [])
    variable = "depthwise_kernel|kernel" if kind == "depthwise" else "kernel"  # Keras 3 names it "kernel"
    params = [ParamMap("weight", variable, conv_role(kind, rank))]
    return params + ([ParamMap("bias", "bias", None)] if use_bias else [])


BATCHNORM_PARAMS = [ParamMap("weight", "gamma", None), ParamMap("bias", "beta", None),
                    ParamMap("running_mean", "moving_mean", None),
                    ParamMap("running_var", "moving_variance", None)]

LAYERNORM_PARAMS = [ParamMap("weight", "gamma", None), ParamMap("bias", "beta", None)]
LAYERNORM_FLAGS = {"gamma": "scale", "beta": "center"}  # the Keras flag that gives a LayerNormalization each variable


def layernorm_variables(config: dict[str, Any]) -> list[str]:
    """The variables a Keras LayerNormalization holds, in its order: gamma unless scale=False, beta unless
    center=False."""
    return [spec.variable for spec in LAYERNORM_PARAMS if config.get(LAYERNORM_FLAGS[spec.variable], True)]


def stacked_as_keras_layers(model: Model) -> Model:
    """``model`` with each torch LSTM/GRU of ``num_layers`` N > 1 as N one-layer RNNs, as a Keras model stacks
    them (``LSTM(return_sequences=True)`` N times, each in ``Bidirectional`` when the torch RNN is): layer
    ``k`` holds the torch tensors ``*_l{k}[_reverse]`` under the one-layer names ``*_l0[_reverse]`` and is
    named ``<name>`` (k = 0) or ``<name>_l<k>``.  Layer k > 0 reads layer k - 1's output (both directions
    concatenated), exactly what torch feeds it; the tensors themselves are not copied."""
    if not any(layer.attrs.get("num_layers", 1) > 1 for layer in model.layers):
        return model
    layers: list[Layer] = []
    for layer in model.layers:
        count = int(layer.attrs.get("num_layers", 1))
        if count == 1:
            layers.append(layer)
            continue
        attrs = {key: value for key, value in layer.attrs.items() if key != "num_layers"}
        previous = list(layer.inputs)
        for k in range(count):
            name = layer.name if k == 0 else f"{layer.name}_l{k}"
            tensors = {param.replace(f"_l{k}", "_l0", 1): tensor for param, tensor in layer.tensors.items()
                       if param.endswith(f"_l{k}") or param.endswith(f"_l{k}_reverse")}
            layers.append(dataclasses.replace(layer, name=name, tensors=tensors, inputs=previous, attrs=dict(attrs)))
            previous = [name]
    return dataclasses.replace(model, layers=layers)


def keras_plan(model: Model, options: WriteOptions) -> Plan:
    """Plan for Keras (channels-last, HWIO family): keys ``<layer>/<variable>`` in Keras weight order.

    Kernels get ``options.target_semantics`` (default correlation, what Keras
    2/3 on TensorFlow computes; ``convolution`` for a Keras-on-Theano runtime).
    Dense rows after a Flatten of a map are reordered C,H,W -> H,W,C.  A stacked torch RNN is one Keras
    layer per torch layer (:func:`stacked_as_keras_layers`).
    """
    model = stacked_as_keras_layers(model)
    semantics = options.target_semantics or CORRELATION
    planned: list[PlannedTensor] = []
    warnings = list(model.warnings)
    flattens: dict = {}  # feeding_flatten's memo over this pass

    def add(layer, variable: str, param: str, dst: str, sem: str = "none", known=(), extra=(), combine=None,
            more_steps=()) -> None:
        tensor = layer.tensors[param]
        src_layout = tensor.layout
        src_pattern = src_layout.pattern if combine != "stack" else "s " + src_layout.pattern
        dst_pattern = dst if combine != "stack" else "s " + dst
        step = Relayout(Layout(src_pattern, src_layout.semantics), Layout(dst_pattern, sem), tuple(known))
        planned.append(PlannedTensor(f"{layer.name}/{variable}", layer, param, tensor, (step,) + tuple(more_steps),
                                     Layout(dst_pattern, sem), tuple(extra), combine))

    for layer in model.layers:
        kind, attrs = layer.kind, layer.attrs
        if not layer.tensors:
            continue
        if kind in ("conv", "conv_transpose", "depthwise", "separable"):
            rank = attrs["rank"]
            if kind == "conv_transpose" and attrs.get("groups", 1) != 1:
                raise UnsupportedError(f"layer {layer.name!r} is a transposed convolution with groups="
                                       f"{attrs['groups']}, which Keras's Conv{rank}DTranspose cannot hold",
                                       fix="Convert to the torch or onnx target, or split the groups yourself")
            known = (("m", attrs["depth_multiplier"]),) if kind in ("depthwise", "separable") else ()
            for spec in conv_params(kind, rank, any(p.endswith("bias") for p in layer.tensors)):
                variable = spec.variable.split("|")[0]
                if spec.role is None:
                    add(layer, variable, spec.param, "o")
                elif spec.role.startswith("pointwise"):
                    add(layer, variable, spec.param, KERAS_PATTERNS[spec.role])
                else:
                    add(layer, variable, spec.param, KERAS_PATTERNS[spec.role], semantics, known)
        elif kind == "dense":
            shape = flattened_map_shape(model, layer, flattens)
            if shape:
                channels_last, channels_first, known = flatten_patterns(shape)
                tensor = layer.tensors["weight"]
                step = Relayout(Layout(f"o {channels_first}"), Layout(f"{channels_last} o"), known)
                planned.append(PlannedTensor(f"{layer.name}/kernel", layer, "weight", tensor, (step,),
                                             Layout(f"{channels_last} o")))
            else:
                if shape is None and not attrs.get("rows_as_stored"):  # else the Keras reader said it once
                    warnings.append(f"layer {layer.name!r}: Dense after Flatten with unknown map shape; rows "
                                    "kept in C,H,W order (a channels-last Keras model needs H,W,C)")
                add(layer, "kernel", "weight", "i o")
            if "bias" in layer.tensors:
                add(layer, "bias", "bias", "o")
        elif kind == "batchnorm":
            for spec in BATCHNORM_PARAMS:
                add(layer, spec.variable, spec.param, "o")
        elif kind == "layernorm":
            for spec in LAYERNORM_PARAMS:
                if spec.variable in layernorm_variables(attrs):
                    add(layer, spec.variable, spec.param, "o")
        elif kind == "embedding":
            add(layer, "embeddings", "weight", "n e")
        elif kind == "prelu":
            axes = layer.tensors["weight"].layout.pattern.split()
            if len(axes) == 1:  # per channel (C,): Keras's alpha keeps a length-1 axis per shared axis
                rank = len(layer.output_shape) if layer.output_shape else 1
                axes = ["c"] + ["1"] * (rank - 1)
            add(layer, "alpha", "weight", " ".join(axes[1:] + axes[:1]))
        elif kind in ("lstm", "gru"):
            gates = ("ifco", "ifco") if kind == "lstm" else ("rzh", "zrh")
            reorder = (ReorderBlocks(-1, *gates),)
            bidirectional = is_bidirectional(layer)
            # Keras's Bidirectional wrapper holds the forward layer's weights, then the backward layer's.
            for suffix, prefix in (("", "forward_"), ("_reverse", "backward_"))[:2 if bidirectional else 1]:
                scope = f"{prefix}{kind}/" if bidirectional else ""
                add(layer, scope + "kernel", "weight_ih_l0" + suffix, "i o", more_steps=reorder)
                add(layer, scope + "recurrent_kernel", "weight_hh_l0" + suffix, "i o", more_steps=reorder)
                if "bias_ih_l0" + suffix in layer.tensors:
                    hh = (layer.tensors["bias_hh_l0" + suffix],)
                    if kind == "gru" and attrs.get("reset_after", True):
                        add(layer, scope + "bias", "bias_ih_l0" + suffix, "o", extra=hh, combine="stack",
                            more_steps=reorder)
                    else:  # LSTM, and GRU with reset_after=False: both biases sit outside the reset gate's product
                        add(layer, scope + "bias", "bias_ih_l0" + suffix, "o", extra=hh, combine="sum",
                            more_steps=reorder)
        elif kind == "constant":  # a graph constant no layer holds (an ONNX source's normalisation, LayerNorm)
            raise UnsupportedError(f"{layer.name!r} is a constant of the source graph, outside any layer; a Keras "
                                   "weights file holds layer weights only", fix="Convert to the torch or npz target")
        elif kind == "custom":  # kept unchanged (--keep-unknown): each tensor under its own variable name
            for param, tensor in layer.tensors.items():
                add(layer, param, param, tensor.layout.pattern)
        elif layer.name == ROOT_LAYER:
            raise UnsupportedError(f"the top-level parameters {', '.join(layer.tensors)} belong to no submodule, so "
                                   "no Keras layer holds them", fix="Convert to the torch or npz target, or save the "
                                   "state dict without them (and an {opt:arch} module without them)")
        else:
            raise UnsupportedError(f"layer {layer.name!r} of kind {kind} cannot be written as Keras weights",
                                   fix="Convert to the torch or npz target")
    return Plan("keras", planned, warnings)


def keras3_variable_names(class_name: str, config: dict[str, Any]) -> list[str]:
    """Names of a Keras 3 layer's variables in the order ``.weights.h5`` stores them (``vars/0``, ``vars/1``, ...)."""
    bias = ["bias"] if config.get("use_bias", True) else []
    if class_name in CONV_KINDS:
        kind = CONV_KINDS[class_name][0]
        if kind == "separable":
            return ["depthwise_kernel", "pointwise_kernel"] + bias
        return ["kernel"] + bias
    if class_name == "Dense":
        return ["kernel"] + bias
    if class_name == "BatchNormalization":
        return ((["gamma"] if config.get("scale", True) else []) + (["beta"] if config.get("center", True) else [])
                + ["moving_mean", "moving_variance"])
    if class_name == "LayerNormalization":
        return layernorm_variables(config)
    if class_name == "Embedding":
        return ["embeddings"]
    if class_name == "PReLU":
        return ["alpha"]
    if class_name in ("LSTM", "GRU"):
        return ["kernel", "recurrent_kernel"] + bias
    return []
