"""The ``java`` target: the plain-array output plus a dependency-free Java loader, a checker and,
with ``--emit-forward``, the model's forward pass in plain Java.

``weightport convert SRC -o DIR --to java`` writes what ``--to raw`` writes
(``weights.bin``, ``manifest.json``; see :mod:`weightport.formats.plain.raw`, whose
functions this module builds on) and:

* ``WeightportWeights.java``: ``WeightportWeights.load(Path dir)`` parses
  ``manifest.json`` with its own small JSON parser (no library), maps
  ``weights.bin`` and returns every tensor by name as ``float[]`` (float32 and
  float16 files) or ``double[]`` (float64), with its shape, layout, semantics
  and a row-major ``index(int...)`` helper; ``verify()`` checks each tensor's
  SHA-256.
* ``WeightportCheck.java``: ``java WeightportCheck DIR`` prints ``NAME SUM``
  per tensor in manifest order, the double-precision sum in ``%.9e``.
* ``WeightportModel.java`` (``--emit-forward``): the forward pass of a
  sequential CNN/MLP with the tensors' layouts and semantics compiled in.

The Java is kept as Java: package data in ``java/`` beside this module (see
:data:`JAVA_RESOURCES`).  The first two files are copied as they are; the third
is a template that compiles on its own, with placeholders this module fills:
``"@@KEY@@"`` (a whole string literal, replaced by :func:`java_string_literal`
of a value), ``/*@KEY@*/`` (replaced by generated code: int lists, or field,
constructor and forward-pass lines).

Names from the model file (layers, tensor keys, the source's path, version and
backend) are data: they reach the generated Java only as string literals made by
:func:`java_string_literal`, never inside comments, and no identifier is derived
from them (tensor fields are ``T0``, ``T1``, ...).
torch and tensorflow are never imported.
"""

from __future__ import annotations

import math
import re
from importlib.resources import files
from typing import Any, Callable

from weightport.core.errors import UnsupportedError
from weightport.core.layout import CONVOLUTION, parse_pattern
from weightport.core.model import Layer, Model
from weightport.core.options import WriteOptions
from weightport.formats.plain import raw

NAME = "java"
DESCRIPTION = "plain arrays plus a dependency-free Java loader (folder: weights.bin, manifest.json, *.java)"
EXTENSIONS = ("",)

WEIGHTS_FILE = "WeightportWeights.java"
CHECK_FILE = "WeightportCheck.java"
MODEL_FILE = "WeightportModel.java"
JAVA_RESOURCES = (WEIGHTS_FILE, CHECK_FILE, MODEL_FILE)  # in java/ beside this module; the last is a template


def sniff(path: str) -> bool:
    return False


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write the plain-array folder with the Java loader, checker and (``emit_forward``) model."""
    prepared = raw.prepare(model, options)
    forward = None
    if getattr(options, "emit_forward", False):  # refuses unsupported layers before anything is written
        forward = generate_model(model, prepared.plan, prepared.chosen, prepared.orders, prepared.manifest)
    return raw.write_folder(prepared, path, options, java_files(forward))


def move_into_place(complete: str, path: str, force: bool) -> None:
    """A complete folder (a validated staging copy) put at ``path`` as the raw target puts its own."""
    raw.move_into_place(complete, path, force)


def java_resource(name: str) -> str:
    """The text of ``java/NAME``, shipped as package data."""
    return (files(__package__) / "java" / name).read_text(encoding="utf-8")


def java_files(forward: str | None) -> dict[str, str]:
    """File name -> Java source for the output folder."""
    sources = {WEIGHTS_FILE: java_resource(WEIGHTS_FILE), CHECK_FILE: java_resource(CHECK_FILE)}
    if forward is not None:
        sources[MODEL_FILE] = forward
    return sources


# ------------------------------------------------------------------------------- Java text from data

JAVA_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def java_string_literal(text: str) -> str:
    """``text`` as a Java string literal, quotes included: the one way data reaches generated Java.

    The result is printable ASCII.  Backslash, quote, tab, newline, carriage return, backspace and
    form feed get their escapes; other control characters (NUL, DEL, ...) three-digit octal ones
    (``\\000``: a digit after it is never read as part of it); non-ASCII characters ``\\uXXXX``
    escapes (a surrogate pair beyond U+FFFF).  javac translates ``\\uXXXX`` before it reads
    anything else, even in comments and literals, so it matters that: every backslash of ``text``
    is doubled, hence a ``\\u`` of ``text`` is never read as an escape (javac reads one only where
    the backslash follows an even run of backslashes), and the only ``\\uXXXX`` written are those
    for non-ASCII characters, which never translate into a line end, a quote or a backslash.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in JAVA_ESCAPES:
            out.append(JAVA_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code < 0x80:
            out.append(f"\\{code:03o}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            high, low = divmod(code - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
    out.append('"')
    return "".join(out)


PLACEHOLDER = re.compile(r'"@@(\w+)@@"|^[ \t]*/\*@(\w+)@\*/$|/\*@(\w+)@\*/', re.M)


def fill_template(template: str, strings: dict[str, str], code: dict[str, str]) -> str:
    """Fill a Java template's placeholders in one pass (so filled-in text is never read as one).

    ``"@@KEY@@"`` becomes ``java_string_literal(strings[KEY])``; a line that is only ``/*@KEY@*/``
    becomes ``code[KEY]`` (lines indented by the caller); ``/*@KEY@*/`` within a line becomes
    ``code[KEY]``.  Every placeholder must be given and every value used.
    """
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        string_key, line_key, inline_key = match.groups()
        if string_key is not None:
            used.add(string_key)
            return java_string_literal(strings[string_key])
        key = line_key or inline_key
        used.add(key)
        return code[key]

    text = PLACEHOLDER.sub(replace, template)
    unused = (set(strings) | set(code)) - used
    if unused:
        raise KeyError(f"the template has no placeholder for {sorted(unused)}")
    return text


# ------------------------------------------------------------------------------------ --emit-forward

FORWARD_KINDS = ("input", "conv", "depthwise", "separable", "conv_transpose", "dense", "batchnorm", "activation", "prelu", "pool",
                 "global_pool", "flatten", "dropout", "padding", "cropping")
ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "softplus", "softsign", "swish",
               "silu", "relu6", "exponential")


def activation_name(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("class_name", value.get("config", {}).get("name"))
    return "linear" if value in (None, "linear") else str(value)


def group_strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major element strides of each array axis."""
    return [math.prod(shape[k + 1:]) for k in range(len(shape))]


def java_ints(values: Any) -> str:
    return "new int[]{" + ", ".join(str(int(v)) for v in values) + "}"


def java_double(value: Any, refuse: Callable[[str], Exception]) -> str:
    """A finite number as a Java double literal (``refuse(why)`` makes the error for any other)."""
    number = float(value)
    if not math.isfinite(number):
        raise refuse(f"{number} is not a finite number")
    return repr(number)


def pad3(values: list[int], fill: int) -> list[int]:
    return [fill] * (3 - len(values)) + list(values)


class ForwardWriter:
    """Builds WeightportModel.java for a sequential model from the raw plan (layouts and semantics compiled in)."""

    def __init__(self, model: Model, plan: Any, orders: dict[str, str], manifest: dict[str, Any]) -> None:
        self.model = model
        self.planned = {(p.layer.name, p.param): p for p in plan.tensors}
        self.orders = orders
        self.manifest = manifest
        self.fields: list[str] = []
        self.loads: list[str] = []
        self.body: list[str] = []
        self.count = 0

    def refuse(self, layer: Layer | None, why: str) -> UnsupportedError:
        where = f"layer {layer.name!r} ({layer.source_class or layer.kind}): " if layer is not None else ""
        return UnsupportedError(f"{{opt:emit_forward=True}}: {where}{why}",
                                fix="Drop {opt:emit_forward=True}; weights.bin and manifest.json still hold every tensor "
                                    "and the layer attributes for your own runtime")

    def tensor(self, layer: Layer, param: str) -> tuple[str, Any]:
        """(field name, planned tensor) of one of the layer's tensors, loaded in the constructor."""
        item = self.planned.get((layer.name, param))
        if item is None:
            raise self.refuse(layer, f"tensor {param!r} is missing")
        name = f"T{self.count}"
        self.count += 1
        shape = tuple(int(n) for n in item.shape)
        self.fields.append(f"    private final double[] {name};")
        self.loads.append(f"        {name} = tensor(weights, {java_string_literal(item.key)}, "
                          f"{java_string_literal(item.layout.pattern)}, {java_string_literal(item.layout.semantics)}, "
                          f"{java_ints(shape)});")
        return name, item

    def kernel_strides(self, layer: Layer, item: Any) -> tuple[str, list[int], int]:
        """Java ``int[]{o, i, kd, kh, kw}`` strides, the kernel sizes (KD, KH, KW) and the O-group length."""
        groups = parse_pattern(item.layout.pattern)
        shape = tuple(int(n) for n in item.shape)
        strides = group_strides(shape)
        by_role = {"O": 0, "I": 0, "d": 0, "h": 0, "w": 0}
        sizes = {"d": 1, "h": 1, "w": 1}
        out = None
        for group, length, stride in zip(groups, shape, strides):
            if "o" in group or "m" in group:
                by_role["O"], out = stride, length
            elif group == ("i",):
                by_role["I"] = stride
            elif len(group) == 1 and group[0] in sizes:
                by_role[group[0]], sizes[group[0]] = stride, length
            elif group:
                raise self.refuse(layer, f"kernel layout {item.layout.pattern!r} is not a convolution kernel's")
        if out is None:
            raise self.refuse(layer, f"kernel layout {item.layout.pattern!r} has no output-channel axis")
        return (java_ints([by_role[r] for r in ("O", "I", "d", "h", "w")]), [sizes["d"], sizes["h"], sizes["w"]],
                out)

    def emit(self, line: str) -> None:
        self.body.append("        " + line)

    def conv_call(self, layer: Layer, shape: tuple[int, ...], weight: str, item: Any, bias: str, groups: int,
                  strides: list[int], dilations: list[int], pads: list[list[int]]) -> tuple[int, ...]:
        ws, kernel, out = self.kernel_strides(layer, item)
        rank = len(shape) - 1
        dims = [shape[0]] + pad3(list(shape[1:]), 1)
        flat_pads = [p for pair in [[0, 0]] * (3 - rank) + [list(p) for p in pads] for p in pair]
        flip = item.layout.semantics == CONVOLUTION
        spatial_out = []
        for n, k, s, d, (before, after) in zip(dims[1:], kernel, pad3(strides, 1), pad3(dilations, 1),
                                               zip(flat_pads[::2], flat_pads[1::2])):
            size = (n + before + after - (k - 1) * d - 1) // s + 1
            if size <= 0:
                raise self.refuse(layer, "the kernel does not fit the input")
            spatial_out.append(size)
        self.emit(f"x = conv(x, {java_ints(dims)}, {weight}, {ws}, {bias}, {out}, {groups}, "
                  f"{java_ints(kernel)}, {java_ints(pad3(strides, 1))}, {java_ints(pad3(dilations, 1))}, "
                  f"{java_ints(flat_pads)}, {'true' if flip else 'false'});"
                  + ("  // kernel stored for true convolution: the window reads it rotated 180 degrees" if flip else ""))
        return (out,) + tuple(spatial_out[3 - rank:])

    def spatial_attrs(self, layer: Layer, rank: int) -> tuple[list[int], list[int], list[list[int]]]:
        a = layer.attrs
        pads = a.get("pads")
        if pads is None or len(pads) != rank:
            raise self.refuse(layer, "its explicit per-side pads are unknown (the input shape is not recorded)")
        strides = list(a.get("strides") or [1] * rank)
        dilations = list(a.get("dilations") or [1] * rank)
        return strides, dilations, [list(p) for p in pads]

    def activation(self, layer: Layer, name: Any, shape: tuple[int, ...]) -> None:
        name = activation_name(name)
        if name == "linear":
            return
        if name not in ACTIVATIONS:
            raise self.refuse(layer, f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        self.emit(f"x = activation(x, {java_string_literal(name)}, {shape[0]});")

    def layer(self, layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
        kind, a = layer.kind, layer.attrs
        is_map = len(shape) >= 2
        if kind in ("conv", "depthwise", "separable"):
            if not is_map or a.get("rank") != len(shape) - 1:
                raise self.refuse(layer, f"expects a rank-{a.get('rank')} feature map, gets shape {shape}")
            strides, dilations, pads = self.spatial_attrs(layer, len(shape) - 1)
            if kind == "separable":
                weight, item = self.tensor(layer, "depthwise.weight")
                shape = self.conv_call(layer, shape, weight, item, "null", shape[0], strides, dilations, pads)
                weight, item = self.tensor(layer, "pointwise.weight")
                bias = self.tensor(layer, "pointwise.bias")[0] if "pointwise.bias" in layer.tensors else "null"
                one = [1] * (len(shape) - 1)
                shape = self.conv_call(layer, shape, weight, item, bias, 1, one, one, [[0, 0]] * len(one))
            else:
                weight, item = self.tensor(layer, "weight")
                bias = self.tensor(layer, "bias")[0] if "bias" in layer.tensors else "null"
                groups = shape[0] if kind == "depthwise" else int(a.get("groups") or 1)
                if shape[0] % groups:
                    raise self.refuse(layer, f"{shape[0]} input channels do not split into {groups} groups")
                shape = self.conv_call(layer, shape, weight, item, bias, groups, strides, dilations, pads)
            self.activation(layer, a.get("activation"), shape)
            return shape
        if kind == "conv_transpose":
            if not is_map or a.get("rank") != len(shape) - 1:
                raise self.refuse(layer, f"expects a rank-{a.get('rank')} feature map, gets shape {shape}")
            rank = len(shape) - 1
            strides, dilations, pads = self.spatial_attrs(layer, rank)
            weight, item = self.tensor(layer, "weight")
            bias = self.tensor(layer, "bias")[0] if "bias" in layer.tensors else "null"
            ws, kernel, out_per_group = self.kernel_strides(layer, item)
            groups = int(a.get("groups") or 1)
            extra = list(a.get("output_padding") or [0] * rank)
            dims = [shape[0]] + pad3(list(shape[1:]), 1)
            flat_pads = [p for pair in [[0, 0]] * (3 - rank) + pads for p in pair]
            spatial = [(n - 1) * s - before - after + (k - 1) * d + 1 + e for n, k, s, d, (before, after), e in
                       zip(shape[1:], kernel[3 - rank:], strides, dilations, pads, extra)]
            flip = item.layout.semantics == CONVOLUTION
            self.emit(f"x = convTranspose(x, {java_ints(dims)}, {weight}, {ws}, {bias}, {out_per_group * groups}, "
                      f"{groups}, {java_ints(kernel)}, {java_ints(pad3(strides, 1))}, {java_ints(pad3(dilations, 1))}, "
                      f"{java_ints(flat_pads)}, {java_ints([1] * (3 - rank) + spatial)}, {'true' if flip else 'false'});"
                      + ("  // kernel stored for true convolution: read rotated 180 degrees" if flip else ""))
            shape = (out_per_group * groups,) + tuple(spatial)
            self.activation(layer, a.get("activation"), shape)
            return shape
        if kind == "dense":
            if is_map:
                raise self.refuse(layer, "Dense on a feature map (not after Flatten) is not supported")
            weight, item = self.tensor(layer, "weight")
            groups = parse_pattern(item.layout.pattern)
            item_shape = tuple(int(n) for n in item.shape)
            strides = group_strides(item_shape)
            o_axis = next(k for k, g in enumerate(groups) if g == ("o",))
            i_axis = 1 - o_axis
            if item_shape[i_axis] != shape[0]:
                raise self.refuse(layer, f"takes {item_shape[i_axis]} inputs, gets {shape[0]}")
            bias = self.tensor(layer, "bias")[0] if "bias" in layer.tensors else "null"
            self.emit(f"x = dense(x, {weight}, {java_ints([strides[o_axis], strides[i_axis]])}, {bias}, "
                      f"{item_shape[o_axis]});")
            shape = (item_shape[o_axis],)
            self.activation(layer, a.get("activation"), shape)
            return shape
        if kind == "batchnorm":
            if "running_mean" not in layer.tensors or "running_var" not in layer.tensors:
                raise self.refuse(layer, "batch norm without moving mean and variance")
            names = [self.tensor(layer, p)[0] if p in layer.tensors else "null"
                     for p in ("weight", "bias", "running_mean", "running_var")]
            epsilon = java_double(a.get("epsilon", 1e-3), lambda why: self.refuse(layer, f"epsilon: {why}"))
            self.emit(f"x = batchnorm(x, {shape[0]}, {', '.join(names)}, {epsilon});")
            return shape
        if kind == "activation":
            self.activation(layer, a.get("activation"), shape)
            return shape
        if kind == "prelu":
            alpha, item = self.tensor(layer, "weight")
            item_shape = tuple(int(n) for n in item.shape)
            position = {"c": 0, "d": 1, "h": 2, "w": 3}
            strides = [0, 0, 0, 0]
            for group, length, stride in zip(parse_pattern(item.layout.pattern), item_shape, group_strides(item_shape)):
                if len(group) != 1 or group[0] not in position:
                    raise self.refuse(layer, f"alpha layout {item.layout.pattern!r} is not supported")
                strides[position[group[0]]] = stride if length > 1 else 0
            self.emit(f"x = prelu(x, {java_ints([shape[0]] + pad3(list(shape[1:]), 1))}, {alpha}, "
                      f"{java_ints(strides)});")
            return shape
        if kind == "pool":
            if not is_map:
                raise self.refuse(layer, "pooling needs a feature map")
            rank = len(shape) - 1
            strides, _, pads = self.spatial_attrs(layer, rank)
            kernel = list(a["kernel_size"])
            flat_pads = [p for pair in [[0, 0]] * (3 - rank) + pads for p in pair]
            spatial = []
            for n, k, s, (before, after) in zip(shape[1:], kernel, strides, pads):
                spatial.append((n + before + after - k) // s + 1)
            mode = a.get("mode")
            if mode not in ("max", "avg"):
                raise self.refuse(layer, f"pooling mode {mode!r}")
            self.emit(f"x = pool(x, {java_ints([shape[0]] + pad3(list(shape[1:]), 1))}, {java_ints(pad3(kernel, 1))}, "
                      f"{java_ints(pad3(strides, 1))}, {java_ints(flat_pads)}, {'true' if mode == 'max' else 'false'}, "
                      f"{'true' if a.get('count_include_pad') else 'false'});")
            return (shape[0],) + tuple(spatial)
        if kind == "global_pool":
            if not is_map:
                raise self.refuse(layer, "global pooling needs a feature map")
            self.emit(f"x = globalPool(x, {shape[0]}, {'true' if a.get('mode') == 'max' else 'false'});")
            return (shape[0],) + (1,) * (len(shape) - 1) if a.get("keepdims") else (shape[0],)
        if kind == "flatten":
            if is_map and not self.orders.get(layer.name, "chw").startswith("c"):
                self.emit(f"x = channelsLast(x, {shape[0]}, {math.prod(shape[1:])});  // flatten in "
                          f"{self.orders[layer.name].upper()} order")
            return (math.prod(shape),)
        if kind in ("padding", "cropping"):
            if not is_map:
                raise self.refuse(layer, f"{kind} needs a feature map")
            pairs = [list(p) for p in a["pads" if kind == "padding" else "crops"]]
            if len(pairs) != len(shape) - 1:
                raise self.refuse(layer, f"{kind} of {len(pairs)} axes on a rank-{len(shape) - 1} map")
            flat = [p for pair in [[0, 0]] * (4 - len(shape)) + pairs for p in pair]
            sign = 1 if kind == "padding" else -1
            self.emit(f"x = {'zeroPad' if kind == 'padding' else 'crop'}(x, "
                      f"{java_ints([shape[0]] + pad3(list(shape[1:]), 1))}, {java_ints(flat)});")
            return (shape[0],) + tuple(n + sign * (p[0] + p[1]) for n, p in zip(shape[1:], pairs))
        if kind in ("dropout", "input"):
            return shape
        raise self.refuse(layer, f"kind {kind!r} is not supported (supported: {', '.join(FORWARD_KINDS)})")

    def source(self) -> str:
        model = self.model
        source_input = self.manifest.get("input")
        if not model.layers or model.layers[0].kind != "input" or source_input is None:
            raise self.refuse(None, "the model's input shape is not recorded in the source")
        previous = model.layers[0].name
        for layer in model.layers[1:]:
            if layer.inputs and list(layer.inputs) != [previous]:
                raise self.refuse(layer, f"the model is not sequential (inputs {layer.inputs})")
            previous = layer.name
        shape = tuple(int(n) for n in source_input["canonical_shape"])
        channels_last = source_input["layout"] is not None and source_input["layout"].endswith("C") \
            and len(shape) >= 2
        if channels_last:
            self.emit(f"x = channelsFirst(x, {shape[0]}, {math.prod(shape[1:])});  // "
                      f"{source_input['layout']} -> C{source_input['layout'][:-1]}")
        for position, layer in enumerate(model.layers[1:], 1):
            start = len(self.body)
            shape = self.layer(layer, shape)
            # No name in a comment: the kind is one of FORWARD_KINDS (layer() refuses any other), the name
            # follows in check()'s string literal.
            self.body.insert(start, f"        // layer {position}: {layer.kind}")
            if layer.output_shape is not None and all(n is not None for n in layer.output_shape) \
                    and tuple(int(n) for n in layer.output_shape) != shape:
                raise self.refuse(layer, f"computes shape {shape}, the source says {tuple(layer.output_shape)}")
            self.emit(f"check(x, {math.prod(shape)}, {java_string_literal(layer.name)});")
        output_layout = ""
        output_shape = list(shape)
        if len(shape) >= 2 and channels_last:
            letters = "".join(("d", "h", "w")[3 - (len(shape) - 1):]).upper()
            self.emit(f"x = channelsLast(x, {shape[0]}, {math.prod(shape[1:])});  // C{letters} -> {letters}C")
            output_layout, output_shape = letters + "C", list(shape[1:]) + [shape[0]]
        elif len(shape) >= 2:
            output_layout = "C" + "".join(("d", "h", "w")[3 - (len(shape) - 1):]).upper()
        strings = {
            "SOURCE": f"{model.source.path} ({model.source.format} {model.source.version or ''}, backend "
                      f"{model.source.backend or 'unknown'})",
            "SEMANTICS": self.manifest["semantics"],
            "INPUT_LAYOUT": source_input["layout"] or "",
            "OUTPUT_LAYOUT": output_layout,
        }
        code = {
            "INPUT_SHAPE": ", ".join(str(int(n)) for n in source_input["shape"]),
            "OUTPUT_SHAPE": ", ".join(str(int(n)) for n in output_shape),
            "FIELDS": "\n".join(self.fields),
            "LOADS": "\n".join(self.loads),
            "BODY": "\n".join(self.body),
        }
        return fill_template(java_resource(MODEL_FILE), strings, code)


def generate_model(model: Model, plan: Any, chosen: Any, orders: dict[str, str], manifest: dict[str, Any]) -> str:
    """WeightportModel.java for ``model``; raises UnsupportedError (before anything is written) when a layer
    cannot be generated."""
    return ForwardWriter(model, plan, orders, manifest).source()


