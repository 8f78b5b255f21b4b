"""Weightless ONNX ops in the canonical torch module, with ONNX's own semantics (onnx/reference/ops).

An ONNX source's ops that no canonical layer kind stands for are read as ``onnx_op`` layers
(:mod:`weightport.formats.onnx.graph`): ``attrs["op"]``, its ONNX attributes ``attrs["onnx"]`` and one operand
per ONNX input (a layer output, a literal constant, or None).  Tensors here are exactly the ONNX graph's
(the canonical module keeps ONNX's channels-first layout), so each op is computed as ONNX defines it:
broadcasting as NumPy, ``Resize`` coordinate modes, ``Pad`` pads ``[x1_begin, x2_begin, ..., x1_end, ...]``,
pools with ``ceil_mode`` and per-side pads.  ``constant`` layers hold a kept constant as a named buffer
``value``.  Registered by :func:`register` through the canonical module's :func:`~weightport.formats.torch.module.runs`,
:func:`~weightport.formats.torch.module.builds` and :func:`~weightport.formats.torch.module.output_kind`
(module.py calls it; this module never imports module.py, so there is no import cycle).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weightport.core.errors import UnsupportedError
from weightport.core.model import Layer, Model

Operands = list[Any]
OpRun = Callable[[list[Any], dict[str, Any], Layer], Any]
OPS: dict[str, OpRun] = {}
CONTROL_FLOW = ("If", "Loop", "Scan")  # ops whose graph attributes (subgraphs) are not run here

# ONNX TensorProto data types -> torch dtypes (Cast's ``to``)
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
          9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def op(*names: str) -> Callable[[OpRun], OpRun]:
    """Register the torch computation of ONNX ops: ``run(operands, attributes, layer)``."""
    def register(run: OpRun) -> OpRun:
        for name in names:
            OPS[name] = run
        return run
    return register


class KeptConstant(nn.Module):
    """A constant of the source graph, as stored, in the state_dict buffer ``value``; outputs it."""

    def __init__(self, shape: tuple[int, ...], dtype: str) -> None:
        super().__init__()
        self.register_buffer("value", torch.from_numpy(np.zeros(shape, dtype=np.dtype(dtype))))

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.value


def constant_module(layer: Layer, model: Model) -> nn.Module:
    tensor = layer.tensors["value"]
    return KeptConstant(tuple(tensor.shape), np.dtype(tensor.dtype).name)



def operand_values(layer: Layer, inputs: list[torch.Tensor]) -> Operands:
    """The ONNX inputs of ``layer`` in order: layer outputs, literal tensors, None where omitted."""
    values: Operands = []
    for entry in layer.attrs.get("operands", []):
        if entry is None:
            values.append(None)
        elif "input" in entry:
            values.append(inputs[entry["input"]])
        else:
            array = np.asarray(entry["literal"], dtype=np.dtype(entry["dtype"])).reshape(entry["shape"])
            literal = torch.from_numpy(array)
            literal.literal = True  # a constant of the source: its values may be read as Python numbers
            values.append(literal)
    return values


def run_onnx_op(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    name = layer.attrs["op"]
    run = OPS.get(name) if layer.attrs.get("domain") in (None, "", "ai.onnx") else None
    if run is None and name in CONTROL_FLOW:
        raise UnsupportedError(f"layer {layer.name!r}: ONNX {name} runs subgraphs, which the torch module does not "
                               "run", fix="Export the model with its control flow traced out (a constant If "
                               "condition is inlined; torch.onnx: trace, not script), or convert to torch, npz or "
                               "java, which keep the subgraphs' constants as stored")
    if run is None:
        raise UnsupportedError(f"layer {layer.name!r}: ONNX op {name} cannot be run in torch here",
                               fix="Validate this model layer by layer instead")
    values = operand_values(layer, inputs)
    floating = next((v.dtype for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()
                     and v.dim() > 0), None)
    if floating is not None:  # literal scalars follow the activations' dtype, as ONNX's typed graph has them
        values = [v.to(floating) if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() == 0 else v
                  for v in values]
    return run(values, layer.attrs.get("onnx", {}), layer)


def ints(value: Any) -> list[int]:
    """Integers of a shape/axes operand or attribute (a tensor from a Shape subgraph, or a literal)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def axes_of(values: Operands, a: dict[str, Any], position: int = 1) -> list[int] | None:
    """``axes`` from the attribute (older opsets) or the input at ``position`` (newer); None when absent."""
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    if len(values) > position and values[position] is not None:
        return ints(values[position])
    return None


# -- elementwise -------------------------------------------------------------------------------------
BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq,
          "Less": torch.lt, "Greater": torch.gt}
UNARY = {"Neg": torch.neg, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
         "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Relu": F.relu,
         "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Softsign": F.softsign,
         "Softplus": F.softplus, "Not": torch.logical_not, "HardSwish": F.hardswish}
for _name, _fn in BINARY.items():
    op(_name)(lambda v, a, layer, fn=_fn: fn(v[0], v[1]))
for _name, _fn in UNARY.items():
    op(_name)(lambda v, a, layer, fn=_fn: fn(v[0]))
op("Identity", "Dropout")(lambda v, a, layer: v[0])
op("Where")(lambda v, a, layer: torch.where(v[0].bool(), v[1], v[2]))
op("Min")(lambda v, a, layer: _fold(torch.minimum, v))
op("Max")(lambda v, a, layer: _fold(torch.maximum, v))
op("LeakyRelu")(lambda v, a, layer: F.leaky_relu(v[0], float(a.get("alpha", 0.01))))
op("Elu")(lambda v, a, layer: F.elu(v[0], float(a.get("alpha", 1.0))))
op("Selu")(lambda v, a, layer: float(a.get("gamma", 1.0507009873554805)) * torch.where(
    v[0] > 0, v[0], float(a.get("alpha", 1.6732632423543772)) * (torch.exp(v[0]) - 1)))
op("HardSigmoid")(lambda v, a, layer: torch.clamp(float(a.get("alpha", 0.2)) * v[0] + float(a.get("beta", 0.5)),
                                                  0.0, 1.0))
op("Gelu")(lambda v, a, layer: F.gelu(v[0], approximate="tanh" if a.get("approximate") == "tanh" else "none"))
op("Cast")(lambda v, a, layer: v[0].to(DTYPES[int(a["to"])]))
op("MatMul")(lambda v, a, layer: torch.matmul(v[0], v[1]))


def _fold(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], values: Operands) -> torch.Tensor:
    out = values[0]
    for other in values[1:]:
        out = fn(out, other)
    return out


@op("Div")
def divide(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    """Integer Div truncates toward zero (C semantics, as onnxruntime computes it); float Div is true division."""
    if not v[0].is_floating_point() and not v[1].is_floating_point():
        return torch.div(v[0], v[1], rounding_mode="trunc")
    return torch.div(v[0], v[1])


@op("Clip")
def clip(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    low = v[1] if len(v) > 1 and v[1] is not None else a.get("min")
    high = v[2] if len(v) > 2 and v[2] is not None else a.get("max")
    x = v[0]
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


@op("Softmax")
def softmax(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    """Opset 13+: over ``axis`` (default -1); before: over the input flattened to 2-D at ``axis`` (default 1)."""
    x = v[0]
    if layer.attrs.get("opset", 13) >= 13:
        return F.softmax(x, dim=int(a.get("axis", -1)))
    return F.softmax(to_2d(x, int(a.get("axis", 1))), dim=1).reshape_as(x)


# -- shape ---------------------------------------------------------------------------------------------
def sizes(value: Any) -> list[Any]:
    """A shape operand as reshape/expand sizes: Python ints for a literal, 0-d tensors for a computed one
    (a Shape subgraph), so a traced graph keeps computing it and its dynamic axes stay dynamic."""
    if isinstance(value, torch.Tensor) and not getattr(value, "literal", False):
        return list(value.to(torch.int64).reshape(-1).unbind(0))
    return ints(value)


@op("Reshape")
def reshape(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    x, target = v[0], v[1] if len(v) > 1 else a.get("shape")
    copies = not a.get("allowzero", 0) and 0 in ints(target) if getattr(target, "literal", True) else False
    if copies or isinstance(target, torch.Tensor) and not getattr(target, "literal", False):
        target = torch.as_tensor(target).to(torch.int64).reshape(-1)
        if not a.get("allowzero", 0):  # 0 copies the input's size on the same axis
            n = min(int(target.shape[0]), x.dim())
            head = torch.where(target[:n] == 0, torch._shape_as_tensor(x)[:n], target[:n])
            target = torch.cat([head, target[n:]])
        return x.reshape(list(target.unbind(0)))
    shape = ints(target)
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if n == 0 else n for k, n in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def flatten(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    return to_2d(v[0], int(a.get("axis", 1)))


def to_2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(prod(shape[:axis]), prod(shape[axis:])) by flattening (sizes stay computed when traced)."""
    axis = axis % (x.dim() + 1) if x.dim() else 0
    if axis == 0:
        return x.reshape(1, -1)
    return x.flatten(0, axis - 1).flatten(1) if axis < x.dim() else x.flatten(0, axis - 1).unsqueeze(1)


@op("Squeeze")
def squeeze(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    axes = axes_of(v, a)
    x = v[0]
    if axes is None:
        return x.squeeze()
    for axis in sorted((k % x.dim() for k in axes), reverse=True):
        x = x.squeeze(axis)
    return x


@op("Unsqueeze")
def unsqueeze(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    x = v[0]
    axes = sorted(k % (x.dim() + len(axes_of(v, a) or [])) for k in axes_of(v, a) or [])
    for axis in axes:
        x = x.unsqueeze(axis)
    return x


@op("Transpose")
def transpose(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    perm = [int(p) for p in a.get("perm", range(v[0].dim() - 1, -1, -1))]
    return v[0].permute(perm)


@op("Expand")
def expand(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    shape = ints(v[1])
    if len(shape) < v[0].dim() or any(n != 1 for n in shape):  # a real broadcast: ONNX's bidirectional rule
        return v[0].expand(torch.broadcast_shapes(tuple(v[0].shape), tuple(shape)))
    return v[0]


@op("Concat")
def concat(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    tensors = [t for t in v if t is not None]
    dtype = next((t.dtype for t in tensors if t.dim() > 0 and t.numel() > 0), tensors[0].dtype)
    return torch.cat([t.to(dtype) for t in tensors], dim=int(a.get("axis", 0)))


@op("Split")
def split(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    """One output of Split (``layer.attrs["output_index"]``): sizes from the input (opset 13+), the attribute,
    or ``num_outputs`` / the outputs' count, equal (the last one smaller)."""
    x, axis = v[0], int(a.get("axis", 0))
    sizes = ints(v[1]) if len(v) > 1 and v[1] is not None else [int(n) for n in a.get("split", [])]
    if not sizes:
        count = int(a.get("num_outputs", layer.attrs.get("outputs", 1)))
        step = -(-x.shape[axis] // count)
        sizes = [min(step, x.shape[axis] - k * step) for k in range(count)]
    return torch.split(x, sizes, dim=axis)[int(layer.attrs.get("output_index", 0))]


@op("Slice")
def slice_op(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    x = v[0]
    if "starts" in a:  # opset < 10: attributes
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ints(v[1]), ints(v[2])
        axes = ints(v[3]) if len(v) > 3 and v[3] is not None else None
        steps = ints(v[4]) if len(v) > 4 and v[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % x.dim()
        if step > 0:  # Python slicing: a traced graph slices by the same bounds whatever the size
            x = x[(slice(None),) * axis + (slice(clamp(start), clamp(end), int(step)),)]
        else:
            begin, stop, stride = slice(clamp(start), clamp(end), int(step)).indices(x.shape[axis])
            x = x.index_select(axis, torch.tensor(list(range(begin, stop, stride)), dtype=torch.int64))
    return x


def clamp(bound: int) -> int:
    return int(max(min(bound, 2**62), -2**62))


@op("Gather")
def gather(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    data, indices = v[0], v[1].to(torch.int64)
    axis = int(a.get("axis", 0)) % data.dim()
    if getattr(v[1], "literal", False) and indices.dim() <= 1:  # a constant index: select, sizes stay computed
        picks = [int(i) for i in indices.reshape(-1).tolist()]
        if indices.dim() == 0:
            return data.select(axis, picks[0])
        return torch.cat([data.narrow(axis, i, 1) if i >= 0 else data.select(axis, i).unsqueeze(axis)
                          for i in picks], dim=axis) if picks else data.index_select(axis, indices)
    flat = torch.remainder(indices.reshape(-1), data.shape[axis])
    out = data.index_select(axis, flat)
    return out.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]))


@op("Shape")
def shape(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    whole = torch._shape_as_tensor(v[0])
    start, end = int(a.get("start", 0)), a.get("end")
    return whole[start:None if end is None else int(end)]


@op("ConstantOfShape")
def constant_of_shape(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    fill = a.get("value", {"values": [0.0], "dtype": "float32"})
    return torch.full(ints(v[0]), fill["values"][0], dtype=torch.from_numpy(np.zeros(0, fill["dtype"])).dtype)


# -- reductions and pools ------------------------------------------------------------------------------
REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}


def reduce(name: str) -> OpRun:
    def run(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
        x = v[0]
        axes = axes_of(v, a)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        keep = bool(a.get("keepdims", 1))
        fn = REDUCE[name]
        return fn(x, dim=tuple(k % x.dim() for k in axes), keepdim=keep)
    return run


for _name in REDUCE:
    op(_name)(reduce(_name))
op("GlobalAveragePool")(lambda v, a, layer: v[0].mean(dim=tuple(range(2, v[0].dim())), keepdim=True))
op("GlobalMaxPool")(lambda v, a, layer: v[0].amax(dim=tuple(range(2, v[0].dim())), keepdim=True))


def per_side_pads(a: dict[str, Any], rank: int) -> list[tuple[int, int]]:
    flat = [int(p) for p in a.get("pads", [0] * 2 * rank)]
    return [(flat[k], flat[k + rank]) for k in range(rank)]


@op("MaxPool", "AveragePool")
def pool(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    """ONNX pools: per-side pads (symmetric ones given to torch, others padded first), ``ceil_mode``,
    ``count_include_pad``; auto_pad SAME_* computed from the input size."""
    x = v[0]
    kernel = [int(k) for k in a["kernel_shape"]]
    rank = len(kernel)
    strides = [int(s) for s in a.get("strides", [1] * rank)]
    dilations = [int(d) for d in a.get("dilations", [1] * rank)]
    pads = same_pads(a, x, kernel, strides, dilations) or per_side_pads(a, rank)
    ceil = bool(a.get("ceil_mode", 0))
    maximum = layer.attrs["op"] == "MaxPool"
    symmetric = all(b == e and b <= k // 2 for (b, e), k in zip(pads, kernel))
    if not symmetric:
        flat = [p for pair in reversed(pads) for p in pair]
        x = F.pad(x, flat, value=-math.inf if maximum else 0.0)
        if not maximum and not a.get("count_include_pad", 0):
            raise UnsupportedError(f"layer {layer.name!r}: AveragePool with uneven pads that exclude padding",
                                   fix="Validate this model layer by layer instead")
        pads = [(0, 0)] * rank
    padding = tuple(b for b, _ in pads)
    fns = {(True, 1): F.max_pool1d, (True, 2): F.max_pool2d, (True, 3): F.max_pool3d,
           (False, 1): F.avg_pool1d, (False, 2): F.avg_pool2d, (False, 3): F.avg_pool3d}
    if maximum:
        return fns[True, rank](x, kernel, strides, padding, dilation=dilations, ceil_mode=ceil)
    return fns[False, rank](x, kernel, strides, padding, ceil_mode=ceil,
                            count_include_pad=bool(a.get("count_include_pad", 0)))


def same_pads(a: dict[str, Any], x: torch.Tensor, kernel: list[int], strides: list[int],
              dilations: list[int]) -> list[tuple[int, int]] | None:
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "", "VALID"):
        return None
    pairs = []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pairs.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return pairs


# -- Pad and Resize ------------------------------------------------------------------------------------
@op("Pad")
def pad(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    """ONNX Pad: ``pads`` [x1_begin, x2_begin, ..., x1_end, ...] (input, or attribute before opset 11),
    optional ``axes`` (opset 18); modes constant (with the constant value), reflect, edge."""
    x = v[0]
    flat = ints(v[1]) if len(v) > 1 and v[1] is not None else [int(p) for p in a.get("pads", [])]
    value = float(v[2].reshape(-1)[0]) if len(v) > 2 and v[2] is not None and v[2].numel() else \
        float(a.get("value", 0.0))
    axes = [k % x.dim() for k in ints(v[3])] if len(v) > 3 and v[3] is not None else list(range(x.dim()))
    half = len(flat) // 2
    pairs = {axis: (flat[k], flat[k + half]) for k, axis in enumerate(axes)}
    mode = a.get("mode", "constant")
    first = min((axis for axis, pair in pairs.items() if any(pair)), default=x.dim())
    torch_pads = [p for axis in range(x.dim() - 1, first - 1, -1) for p in pairs.get(axis, (0, 0))]
    if not torch_pads:
        return x
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def source_coordinates(out_size: int, in_size: int, scale: float, mode: str) -> torch.Tensor:
    """ONNX Resize's coordinate transformation: where output index i samples the input."""
    i = torch.arange(out_size, dtype=torch.float64)
    if mode == "asymmetric":
        return i / scale
    if mode == "align_corners":
        return i * (in_size - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(i)
    if mode == "pytorch_half_pixel" and out_size == 1:
        return torch.zeros_like(i)
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    return (i + 0.5) / scale - 0.5  # half_pixel, pytorch_half_pixel


NEAREST = {"round_prefer_floor": lambda c: torch.ceil(c - 0.5), "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
           "floor": torch.floor, "ceil": torch.ceil}


def resize_axis(x: torch.Tensor, axis: int, out_size: int, scale: float, a: dict[str, Any]) -> torch.Tensor:
    """One axis of Resize/Upsample, nearest or linear, by ONNX's index arithmetic (exact for any mode)."""
    in_size = x.shape[axis]
    if out_size == in_size and scale == 1.0:
        return x
    coords = source_coordinates(out_size, in_size, scale, a.get("coordinate_transformation_mode", "half_pixel"))
    if a.get("mode", "nearest") == "nearest":
        index = NEAREST[a.get("nearest_mode", "round_prefer_floor")](coords).clamp(0, in_size - 1).to(torch.int64)
        return x.index_select(axis, index)
    if a.get("mode") != "linear":
        raise UnsupportedError(f"Resize mode {a.get('mode')!r} is not run here",
                               fix="Validate this model layer by layer instead")
    coords = coords.clamp(0, in_size - 1)
    low = torch.floor(coords).to(torch.int64)
    high = torch.clamp(low + 1, max=in_size - 1)
    weight = (coords - low).to(x.dtype)
    shape = [1] * x.dim()
    shape[axis] = out_size
    weight = weight.reshape(shape)
    return x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight


TORCH_MODES = {("nearest", "asymmetric", "floor"): ("nearest", None),
               ("linear", "half_pixel", ""): ("linear", False), ("linear", "pytorch_half_pixel", ""): ("linear", False)}


def torch_interpolation(x: torch.Tensor, scales: list[float], sizes_value: Any, a: dict[str, Any]) -> Any:
    """F.interpolate by scale factors where it computes exactly ONNX's mapping (nearest asymmetric floor;
    linear half_pixel), batch and channels unscaled; None otherwise."""
    mode = a.get("mode", "nearest")
    key = (mode, a.get("coordinate_transformation_mode", "half_pixel"),
           a.get("nearest_mode", "round_prefer_floor") if mode == "nearest" else "")
    if key not in TORCH_MODES or not scales or ints(sizes_value) or scales[:2] != [1.0, 1.0] \
            or not 3 <= x.dim() <= 5 or len(scales) != x.dim() or any(s <= 0 for s in scales[2:]):
        return None
    name, align = TORCH_MODES[key]
    if name == "linear":
        name = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        if any(s < 1 for s in scales[2:]):  # torch antialiases nothing, but clamps differently when shrinking
            return None
    return F.interpolate(x, scale_factor=tuple(scales[2:]), mode=name, align_corners=align)


@op("Resize", "Upsample")
def resize(v: Operands, a: dict[str, Any], layer: Layer) -> torch.Tensor:
    """Resize (opset 10: X, scales; 11+: X, roi, scales, sizes) and Upsample (X, scales; asymmetric)."""
    x = v[0]
    if layer.attrs["op"] == "Upsample" or len(v) == 2:
        a = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor", **a,
             "mode": "linear" if a.get("mode") in ("linear", "bilinear") else a.get("mode", "nearest")}
        scales_value, sizes_value = (v[1] if len(v) > 1 else a.get("scales")), None
    else:
        scales_value = v[2] if len(v) > 2 else None
        sizes_value = v[3] if len(v) > 3 else None
    scales = [float(s) for s in (scales_value.reshape(-1).tolist() if isinstance(scales_value, torch.Tensor)
                                 else scales_value or [])]
    native = torch_interpolation(x, scales, sizes_value, a)
    if native is not None:
        return native
    sizes = ints(sizes_value)
    if sizes:
        scales = [out / size for out, size in zip(sizes, x.shape)]
    else:
        sizes = [int(math.floor(n * s)) for n, s in zip(x.shape, scales)]
    for axis, (size, scale) in enumerate(zip(sizes, scales)):
        x = resize_axis(x, axis, size, scale, a)
    return x


# -- the ONNX LSTM/GRU inside a whole graph --------------------------------------------------------------
def onnx_recurrent(layer: Layer, model: Model) -> nn.Module:
    """An ONNX LSTM/GRU fed by another op takes (seq, batch, features) and gives ONNX's ``Y``
    (seq, directions, batch, hidden); the canonical batch-first module is wrapped to do so.  Its initial
    states (``attrs["initial_state"]``: ``h``, ``c``, the layer's inputs after the sequence, each
    (directions, batch, hidden), torch's ``h_0``/``c_0`` layout) are fed to it, a missing one as zeros; its
    final states ``h_n`` (and ``c_n``) are kept in ``extra_outputs`` for the ``rnn_state`` layers."""
    rnn = BASE["lstm"](layer, model)
    with_states(rnn, layer)
    if not layer.attrs.get("sequence_first"):
        return rnn
    rnn.register_forward_pre_hook(lambda _m, args: (args[0].transpose(0, 1),) + args[1:])

    def as_onnx(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        apart = out if out.dim() == 4 else out.unsqueeze(2)
        return apart.permute(1, 2, 0, 3)
    rnn.register_forward_hook(as_onnx)
    return rnn


def with_states(rnn: nn.Module, layer: Layer) -> None:
    """Feed ``rnn`` the initial states the layer takes, and keep its final states in ``extra_outputs``."""
    present = list(layer.attrs.get("initial_state") or ())
    rnn.takes_all_inputs = True

    def initial(_m: nn.Module, args: tuple) -> tuple:
        given = dict(zip(present, args[1:]))
        if not given:
            return args[:1]
        zeros = torch.zeros_like(next(iter(given.values())))
        if isinstance(rnn, nn.LSTM):
            return args[0], (given.get("h", zeros), given.get("c", zeros))
        return args[0], given["h"]

    def keep(_m: nn.Module, _args: Any, out: Any) -> None:
        states = out[1]
        _m.extra_outputs = list(states) if isinstance(states, tuple) else [states]
    rnn.register_forward_pre_hook(initial)
    rnn.register_forward_hook(keep, prepend=True)


BASE: dict[str, Any] = {}  # the canonical builders these wrap


def register(canonical: Any) -> None:
    """Register the ONNX ops, the ``constant`` layer and the whole-graph LSTM/GRU
    builders in the canonical module ``canonical`` (formats/torch/module.py)."""
    BASE.update(lstm=canonical.BUILDERS["lstm"])
    canonical.builds("constant")(constant_module)
    canonical.builds("lstm", "gru")(onnx_recurrent)
    canonical.runs("onnx_op")(run_onnx_op)
    canonical.output_kind("constant", "onnx_op")(lambda layer, feeding: "flat")
