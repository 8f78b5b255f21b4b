"""Shape inference over the canonical graph (channels-first shapes, batch axis left out).

Readers that know an input shape call :func:`infer_shapes`; it fills
``Layer.output_shape`` and resolves ``padding="same"`` into the explicit
per-side pads TensorFlow uses (the odd pad at the end), which a PyTorch model
must reproduce and which :mod:`weightport.core.padding_note` reports.
"""

from __future__ import annotations

import math
from typing import Any

from weightport.core.errors import BadInputError
from weightport.core.model import Layer, Model

Shape = tuple[int | None, ...]


def same_pads(size: int | None, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding of one spatial axis: ``(before, after)``, the extra pad after."""
    effective = (kernel - 1) * dilation + 1
    if size is None:
        if stride != 1:
            raise ValueError("same padding with stride > 1 needs the input size")
        total = effective - 1
    else:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def theano_same_pads(size: int | None, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Keras-on-Theano 'same' padding of one axis: Theano's ``border_mode='half'`` pads
    ``effective_kernel // 2`` before, and Keras then keeps the first ``ceil(size / stride)``
    outputs (keras 2.3.1 theano_backend.py _preprocess_padding, _postprocess_conv2d_output),
    so the extra pad of an even kernel is at the *start*, unlike TensorFlow."""
    effective = (kernel - 1) * dilation + 1
    before = effective // 2
    if size is None:
        return before, effective - 1 - before
    out = math.ceil(size / stride)
    return before, max((out - 1) * stride + effective - size - before, 0)


def explicit_pads(attrs: dict[str, Any], spatial: Shape) -> list[list[int]]:
    """Per-side pads ``[[before, after], ...]`` of a conv or pool layer for a given input spatial shape.

    ``attrs["same_convention"]`` says whose 'same' it is: ``tensorflow`` (default) or ``theano``.
    """
    padding = attrs.get("padding", "valid")
    kernel = attrs["kernel_size"]
    strides = attrs.get("strides", (1,) * len(kernel))
    dilations = attrs.get("dilations", (1,) * len(kernel))
    if padding == "valid":
        return [[0, 0] for _ in kernel]
    if padding == "same":
        pads = theano_same_pads if attrs.get("same_convention") == "theano" else same_pads
        return [list(pads(n, k, s, d)) for n, k, s, d in zip(spatial, kernel, strides, dilations)]
    if padding == "causal":
        return [[(k - 1) * d, 0] for k, d in zip(kernel, dilations)]
    return [list(p) for p in padding]


def conv_out(size: int | None, kernel: int, stride: int, dilation: int, pads: list[int]) -> int | None:
    if size is None:
        return None
    return (size + pads[0] + pads[1] - (kernel - 1) * dilation - 1) // stride + 1


def transpose_out(size: int | None, kernel: int, stride: int, dilation: int, pads: list[int],
                  output_padding: int) -> int | None:
    if size is None:
        return None
    return (size - 1) * stride - pads[0] - pads[1] + (kernel - 1) * dilation + 1 + output_padding


def ceil_pool_out(size: int | None, kernel: int, stride: int, pads: list[int]) -> int | None:
    """A pool's output size rounded up (Caffe, Torch7 ``:ceil()``, torch ``ceil_mode``): the last window is
    dropped when it would start past the input and its left padding."""
    if size is None:
        return None
    out = -(-(size + pads[0] + pads[1] - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pads[0] else out


def _spatial_out(layer: Layer, spatial: Shape) -> Shape:
    attrs = layer.attrs
    kernel = attrs["kernel_size"]
    strides = attrs.get("strides", (1,) * len(kernel))
    dilations = attrs.get("dilations", (1,) * len(kernel))
    if layer.kind == "conv_transpose":
        pads = attrs.get("pads") or [[0, 0] for _ in kernel]
        out_pad = attrs.get("output_padding") or (0,) * len(kernel)
        return tuple(transpose_out(n, k, s, d, p, o)
                     for n, k, s, d, p, o in zip(spatial, kernel, strides, dilations, pads, out_pad))
    pads = explicit_pads(attrs, spatial)
    if all(n is not None for n in spatial) or attrs.get("padding") != "same":
        attrs["pads"] = pads
    if layer.kind == "pool" and attrs.get("ceil_mode"):
        return tuple(ceil_pool_out(n, k, s, p) for n, k, s, p in zip(spatial, kernel, strides, pads))
    return tuple(conv_out(n, k, s, d, p) for n, k, s, d, p in zip(spatial, kernel, strides, dilations, pads))


def layer_output_shape(layer: Layer, inputs: list[Shape]) -> Shape | None:
    """Output shape of ``layer`` given its inputs' shapes (channels first, no batch)."""
    kind, attrs = layer.kind, layer.attrs
    x = inputs[0] if inputs else None
    if kind == "input":
        return layer.output_shape
    if x is None:
        return None
    if kind in ("conv", "depthwise", "separable", "conv_transpose"):
        channels = attrs.get("out_channels")
        return (channels,) + _spatial_out(layer, x[1:])
    if kind == "pool":
        return (x[0],) + _spatial_out(layer, x[1:])
    if kind == "global_pool" and attrs.get("on_sequence"):  # (time, features) pooled over time
        return (x[-1],) + ((1,) if attrs.get("keepdims") else ())
    if kind == "global_pool":
        return (x[0],) + ((1,) * (len(x) - 1) if attrs.get("keepdims") else ())
    if kind == "padding":
        return (x[0],) + tuple(None if n is None else n + p[0] + p[1] for n, p in zip(x[1:], attrs["pads"]))
    if kind == "cropping":
        return (x[0],) + tuple(None if n is None else n - p[0] - p[1] for n, p in zip(x[1:], attrs["crops"]))
    if kind == "upsampling":
        return (x[0],) + tuple(None if n is None else n * f for n, f in zip(x[1:], attrs["size"]))
    if kind == "flatten":
        return (None,) if any(n is None for n in x) else (math.prod(x),)  # type: ignore[arg-type]
    if kind == "dense":
        return x[:-1] + (attrs.get("units"),)
    if kind in ("lstm", "gru"):
        units = attrs.get("units")
        width = units * 2 if attrs.get("bidirectional") and attrs.get("merge_mode", "concat") == "concat" else units
        return (x[0], width) if attrs.get("return_sequences") else (width,)
    if kind == "embedding":
        return x + (attrs.get("output_dim"),)
    if kind == "concat":
        axis = attrs.get("axis", 0)
        if any(s is None for s in inputs):
            return None
        total = sum(s[axis] for s in inputs) if all(s[axis] is not None for s in inputs) else None  # type: ignore[index]
        out = list(x)
        out[axis] = total
        return tuple(out)
    if kind == "reshape":
        return keras_reshape(attrs.get("target_shape"), x)
    if kind == "permute":  # in the source's channels-last order when it permutes a map (see map_layers)
        ordered = x[1:] + x[:1] if attrs.get("from_map") else x
        return tuple(ordered[int(d) - 1] for d in attrs["dims"])
    if kind == "other" and attrs.get("post_processing"):  # SSD's PriorBox / DetectionOutput, not ported
        return None
    if kind in ("activation", "batchnorm", "layernorm", "dropout", "add", "multiply", "prelu", "other", "subtract", "average",
                "maximum", "minimum", "lrn", "power", "normalize", "softmax"):
        return x
    if kind == "slice":  # Caffe's axis counts the batch
        axis = int(attrs["axis"]) - 1 if int(attrs["axis"]) > 0 else len(x) + int(attrs["axis"])
        if x[axis] is None:
            return None
        start, end = slice_bounds(x[axis], attrs.get("points") or [], int(attrs["index"]), int(attrs["parts"]))
        return x[:axis] + (end - start,) + x[axis + 1:]
    if kind == "reshape_dims":
        if any(n is None for n in x):
            return None
        return caffe_reshape((1,) + x, attrs["dims"], int(attrs.get("axis", 0)), int(attrs.get("num_axes", -1)))[1:]
    if kind == "repeat_vector":
        return (attrs.get("n"),) + x
    if kind == "dot" and len(inputs) == 2:
        return dot_shape(attrs.get("axes", -1), inputs[0], inputs[1])
    return None


def caffe_reshape(shape: tuple[int, ...], dims: list[int], axis: int = 0, num_axes: int = -1) -> tuple[int, ...]:
    """Caffe ``Reshape``: ``dims`` replace the axes ``axis`` .. ``axis + num_axes`` of ``shape`` (the batch
    axis included; ``num_axes`` -1: to the end; a negative ``axis`` counts from the end); a 0 copies the
    replaced axis at its position, one -1 takes the size that remains."""
    axis = axis if axis >= 0 else len(shape) + axis + 1
    end = len(shape) if num_axes == -1 else axis + num_axes
    if not 0 <= axis <= end <= len(shape):
        raise ValueError(f"Reshape axes {axis}..{end} outside a {len(shape)}-axis input")
    middle = [int(shape[axis + k]) if d == 0 else int(d) for k, d in enumerate(dims)]
    if middle.count(-1) > 1:
        raise ValueError("Reshape with more than one -1")
    if -1 in middle:
        known = math.prod(d for d in middle if d != -1)
        middle[middle.index(-1)] = math.prod(shape[axis:end]) // known if known else 0
    if math.prod(middle) != math.prod(shape[axis:end]):
        raise ValueError(f"Reshape of {list(shape[axis:end])} to {middle} changes the element count")
    return tuple(shape[:axis]) + tuple(middle) + tuple(shape[end:])


def slice_bounds(size: int, points: list[int], index: int, parts: int) -> tuple[int, int]:
    """Where part ``index`` of Caffe ``Slice`` starts and ends on an axis of ``size``: between the
    ``slice_point`` values, or ``size / parts`` each without them."""
    if points:
        edges = [0] + [int(p) for p in points] + [size]
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"slice points {list(points)} do not cut an axis of {size} into increasing parts")
    else:
        if size % parts:
            raise ValueError(f"Slice of {size} into {parts} equal parts")
        edges = [k * size // parts for k in range(parts + 1)]
    return edges[index], edges[index + 1]


def keras_reshape(target: Any, x: Shape) -> Shape | None:
    """A Keras ``Reshape`` target shape with its ``-1`` resolved from the input's size."""
    if target is None:
        return None
    target = tuple(int(d) for d in target)
    if -1 not in target:
        return target
    if any(n is None for n in x):
        return None
    known = math.prod(d for d in target if d != -1)
    return tuple(math.prod(x) // known if d == -1 else d for d in target)  # type: ignore[arg-type]


def dot_shape(axes: Any, a: Shape, b: Shape) -> Shape:
    """Keras ``Dot(axes)`` (batch axis counted as 0) of inputs shaped ``a`` and ``b`` (batch excluded):
    the remaining axes of ``a`` then of ``b``, or (1,) when nothing remains."""
    first, second = (axes, axes) if isinstance(axes, int) else (int(axes[0]), int(axes[1]))
    first, second = first % (len(a) + 1) - 1, second % (len(b) + 1) - 1
    rest = tuple(n for k, n in enumerate(a) if k != first) + tuple(n for k, n in enumerate(b) if k != second)
    return rest or (1,)


def check_acyclic(model: Model) -> None:
    """Refuse a graph whose layers feed each other in a cycle (a hostile config): walking such a graph back
    from a layer would never end.  One pass, O(layers + edges); an input naming no layer is ignored, and so
    is what precedes an input layer (nothing feeds it, whatever the order of the list)."""
    positions: dict[str, int] = {}
    for position, layer in enumerate(model.layers):
        positions.setdefault(layer.name, position)
    edges = [[] if layer.kind == "input" else [positions[name] for name in model.input_names(layer) if name in positions]
             for layer in model.layers]
    state = [0] * len(edges)  # 0 not seen, 1 on the current path, 2 done
    for start in range(len(edges)):
        if state[start]:
            continue
        state[start] = 1
        path = [(start, iter(edges[start]))]
        while path:
            node, following = path[-1]
            feeding = next(following, None)
            if feeding is None:
                state[node] = 2
                path.pop()
            elif state[feeding] == 1:
                raise BadInputError(f"the layer graph has a cycle: layer {model.layers[feeding].name!r} feeds itself "
                                    "through its own inputs", path=model.source.path,
                                    fix="The model config is damaged or crafted; save the model again")
            elif state[feeding] == 0:
                state[feeding] = 1
                path.append((feeding, iter(edges[feeding])))


def infer_shapes(model: Model) -> None:
    """Fill ``output_shape`` of every layer whose inputs' shapes are known, in graph order (a graph with a
    cycle is refused first, see :func:`check_acyclic`)."""
    check_acyclic(model)
    shapes: dict[str, Shape | None] = {}
    spatial = any(layer.kind in SPATIAL_KINDS for layer in model.layers)
    maps: set[str] = set()
    previous: str | None = None
    for layer in model.layers:
        names = layer.inputs or ([previous] if previous else [])
        inputs = [shapes.get(n) for n in names]
        known = [s for s in inputs if s is not None]
        fed = bool(names) and names[0] in maps
        if layer.kind in MAP_MAKERS and known and not fed and len(known[0]) >= 2:
            known[0] = sequence_as_map(known[0])  # a (time, features) sequence enters a conv as (features, time)
        if layer.kind != "input" and len(known) != len(inputs):
            shape = None
        else:
            try:
                shape = layer_output_shape(layer, known)
            except (KeyError, TypeError, ValueError):
                shape = None
        layer.output_shape = shape
        shapes[layer.name] = shape
        if outputs_map(layer, fed, spatial):
            maps.add(layer.name)
        previous = layer.name


def sequence_as_map(shape: Shape) -> Shape:
    """A Keras (time, features) sequence as the channels-first map (features, time) a convolution, pooling,
    padding, cropping or upsampling layer reads (the canonical module transposes it the same way)."""
    return shape[-1:] + shape[:-1]


def outputs_map(layer: Layer, fed: bool, spatial: bool) -> bool:
    """True when ``layer``'s output is a channels-first map: what a map maker outputs, a kept-dims global
    pool, a model input of a model with spatial layers, and what keeps the map of its first input (``fed``)."""
    if layer.kind == "input":
        return spatial and layer.output_shape is not None and len(layer.output_shape) >= 2
    if layer.kind == "global_pool":
        return bool(layer.attrs.get("keepdims"))
    return layer.kind in MAP_MAKERS or (fed and layer.kind not in NOT_MAPS)


MAP_MAKERS = ("conv", "depthwise", "separable", "conv_transpose", "pool", "padding", "cropping", "upsampling")
NOT_MAPS = ("flatten", "embedding", "lstm", "gru", "dense", "reshape", "permute", "repeat_vector", "dot")
SPATIAL_KINDS = ("conv", "depthwise", "separable", "conv_transpose", "pool", "global_pool")


def map_layers(model: Model) -> set[str]:
    """Names of the layers whose output is a channels-first feature map in the canonical module (what a
    convolution, pooling, padding, cropping or upsampling outputs, and what keeps its first input's map:
    activations, batch norms, merges); a model input is one when the model has spatial layers.

    Everything else is a sequence (time, features) or a flat vector, in the same axis order as in Keras:
    a Concatenate over it takes the Keras axis as is, and a Flatten of it is marked ``keeps_order`` (Keras
    and the canonical module flatten it alike, so no Dense rows move).  A Flatten of a map that went
    through a Permute or Reshape is marked ``hidden_by`` that layer: which map axis each row belongs to
    is not worked out, so its Dense rows stay as stored and the reader says which layer hides them."""
    spatial = any(layer.kind in SPATIAL_KINDS for layer in model.layers)
    maps: set[str] = set()
    hiders: dict[str, str] = {}  # layer -> the Permute/Reshape of a map its output comes through
    previous: str | None = None
    for layer in model.layers:
        names = layer.inputs or ([previous] if previous else [])
        fed = bool(names) and names[0] in maps
        hider = hiders.get(names[0]) if names else None
        if layer.kind in ("permute", "reshape"):
            layer.attrs["from_map"] = fed  # the canonical module runs it in the source's channels-last order
        if layer.kind in ("permute", "reshape") and fed:
            hiders[layer.name] = layer.name
        elif hider and layer.kind not in MAP_MAKERS and layer.kind not in NOT_MAPS:
            hiders[layer.name] = hider
        if layer.kind == "flatten" and hider:
            layer.attrs["hidden_by"] = hider
        is_map = outputs_map(layer, fed, spatial)
        if layer.kind == "flatten" and not fed and not hider:
            layer.attrs["keeps_order"] = True
        if layer.kind in ("global_pool", "activation") and not fed and names and sequence_rank(model, names[0]):
            layer.attrs["on_sequence"] = True  # pools over time / softmaxes over features, as Keras does
        if is_map:
            maps.add(layer.name)
        previous = layer.name
    return maps


def sequence_rank(model: Model, name: str) -> bool:
    """True when layer ``name`` outputs at least (time, features)."""
    layer = model.find(name)
    return layer is not None and layer.output_shape is not None and len(layer.output_shape) >= 2


def canonical_concat_axis(source_axis: int, rank: int, data_format: str | None, sequence: bool) -> int:
    """The canonical axis (0-based, batch excluded) of a Keras Concatenate ``axis`` over inputs of ``rank``
    axes: a sequence keeps Keras's (time, features) order; a channels-last map (h, w, c) becomes (c, h, w)."""
    index = source_axis - 1 if source_axis > 0 else rank + source_axis
    if sequence or data_format == "channels_first":
        return index
    return 0 if index == rank - 1 else index + 1


def settle_concat_axes(model: Model, maps: set[str]) -> None:
    """Give every Keras Concatenate (``source_axis`` recorded) its canonical ``axis`` from its inputs'
    ranks and kinds; shapes are then inferred again (Permute/Reshape shapes depend on ``maps`` too)."""
    for layer in model.layers:
        if layer.kind != "concat" or "source_axis" not in layer.attrs:
            continue
        names = model.input_names(layer)
        first = model.find(names[0]) if names else None
        if first is None or first.output_shape is None:
            continue
        axis = canonical_concat_axis(int(layer.attrs["source_axis"]), len(first.output_shape),
                                     layer.attrs.get("data_format"), names[0] not in maps)
        layer.attrs["axis"] = axis
    infer_shapes(model)


def feeding_flatten(model: Model, layer: Layer, memo: dict[int, Layer | None] | None = None) -> Layer | None:
    """The Flatten layer whose output reaches ``layer`` through shape-preserving layers only.

    ``memo``, one dict kept over a pass through a model whose graph does not change meanwhile, remembers
    every layer walked, so the whole pass stays linear however many layers share one long chain.
    """
    memo = {} if memo is None else memo
    names = model.input_names(layer)
    current = model.find(names[0]) if len(names) == 1 else None
    walked: dict[int, None] = {}
    found: Layer | None = None
    while current is not None:
        key = id(current)
        if key in memo:
            found = memo[key]
            break
        if key in walked:  # a cycle (refused when the model was read; never followed twice)
            break
        walked[key] = None
        if current.kind == "flatten":
            found = current
            break
        if current.kind not in ("dropout", "activation"):
            break
        names = model.input_names(current)
        current = model.find(names[0]) if len(names) == 1 else None
    for key in walked:
        memo[key] = found
    return found


def flattened_map_shape(model: Model, dense: Layer,
                        memo: dict[int, Layer | None] | None = None) -> tuple[int, ...] | None | bool:
    """Channels-first shape ``(c, [d,] [h,] w)`` of the map a Flatten feeds into ``dense``.

    ``False`` when no Flatten of a spatial map feeds the layer; ``None`` when
    one does but its shape is unknown.  ``memo`` as for :func:`feeding_flatten`.
    """
    flatten = feeding_flatten(model, dense, memo)
    if flatten is None:
        return False
    if flatten.attrs.get("keeps_order") or flatten.attrs.get("hidden_by"):
        return False
    names = model.input_names(flatten)
    before = model.find(names[0]) if names else None
    shape = before.output_shape if before is not None else None
    if shape is None or any(n is None for n in shape):
        return None
    if len(shape) < 2:
        return False
    return tuple(int(n) for n in shape)


def flatten_patterns(shape: tuple[int, ...]) -> tuple[str, str, tuple[tuple[str, int], ...]]:
    """(channels-last, channels-first) feature patterns of a flattened map and the axis sizes.

    For shape (c, h, w): ``("(h w c)", "(c h w)", (("c", c), ("h", h), ("w", w)))``.
    """
    spatial = ["d", "h", "w"][3 - (len(shape) - 1):]
    known = tuple(zip(["c"] + spatial, shape))
    return "(" + " ".join(spatial + ["c"]) + ")", "(" + " ".join(["c"] + spatial) + ")", known
