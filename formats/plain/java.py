"""The ``java`` target: the model's weights as classpath resources plus dependency-free Java, laid out as a
Maven/Gradle project (``src/main/java``, ``src/main/resources``), with, under ``--emit-forward``, the
model's forward pass in float32 Java.

``weightport convert SRC -o DIR --to java [--java-package P] [--java-class C] [--emit-forward]`` writes,
with ``p`` the package's folder (``com/example/model``):

* ``src/main/resources/p/C.bin`` and ``C.json``: what ``--to raw`` writes as ``weights.bin`` and
  ``manifest.json`` (see :mod:`weightport.formats.plain.raw`, whose functions this module builds on);
  the manifest also lists every file written (``"files"``), which is what ``--force`` may remove.
* ``src/main/java/p/CWeights.java``: ``CWeights.load()`` reads the two resources from the classpath
  (``load(Path)``, ``load(InputStream, InputStream)`` from elsewhere), checks every tensor's SHA-256
  and returns each tensor by name with its shape, layout and semantics; ``readNpy`` reads ``.npy``
  input of either byte order.
* ``src/main/java/p/CCheck.java``: ``java p.CCheck`` prints ``NAME SUM`` per tensor.
* ``src/main/java/p/C.java`` (``--emit-forward``): ``float[] forward(float[])`` and the batched
  ``float[][] forward(float[][])``, layouts and semantics compiled in, optional threads.
* ``README.C.md``: how to build and use the classes from Maven, Gradle or plain ``javac``.

The Java is kept as Java: templates shipped as package data in ``java/`` beside this module, filled by
:mod:`weightport.formats.plain.java_text` (shared with the target's check), which also says where each
file goes for a package and class.

Names from the model file (layers, tensor keys, the source's name, version and backend) are data: they
reach the generated Java only as string literals made by :func:`java_string_literal`, never inside
comments; the only identifiers derived from them are the default class name, reduced to ASCII letters
and digits (:func:`class_name`).  The output holds no absolute path and is byte-identical for the same
input and options.  torch and tensorflow are never imported.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.layout import CONVOLUTION, parse_pattern
from weightport.core.model import Layer, Model
from weightport.core.options import WriteOptions
from weightport.core.shapes import ceil_pool_out
from weightport.formats.plain import raw
from weightport.formats.plain.java_text import (JAVA_RESOURCES, MODEL_FILE, TEMPLATE_CLASSES, JavaNames, fixed_sources,
                                               java_resource, java_string_literal, render)
from weightport.formats.plain.project import move_project, write_project

NAME = "java"
DESCRIPTION = "a Maven/Gradle-shaped folder: the weights as classpath resources, a Java loader and forward pass"
EXTENSIONS = ("",)

JAVA_KEYWORDS = frozenset("""abstract assert boolean break byte case catch char class const continue default do double
else enum extends final finally float for goto if implements import instanceof int interface long native new package
private protected public return short static strictfp super switch synchronized this throw throws transient try void
volatile while true false null var yield record sealed permits non-sealed _""".split())
NOT_CODE = re.compile(r"""/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])+'""", re.S)  # comments, literals
IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")


def sniff(path: str) -> bool:
    return False


def reserved_names() -> frozenset[str]:
    """Capitalised identifiers the templates use (java.lang and imported classes, nested classes): a
    generated class called like one would shadow it."""
    code = [NOT_CODE.sub(" ", java_resource(name)) for name in JAVA_RESOURCES]
    return frozenset(word for text in code for word in re.findall(r"\b[A-Z][A-Za-z0-9_]*\b", text))


def usable_class(name: str) -> bool:
    taken = reserved_names()
    return bool(IDENTIFIER.match(name)) and name not in JAVA_KEYWORDS and len(name) <= 200 \
        and not any(pattern.format(name) in taken for pattern in TEMPLATE_CLASSES.values())


def class_name(source_path: str) -> str:
    """The default class name: the source file's name in ASCII CamelCase (``cnn_flatten_dense.h5`` ->
    ``CnnFlattenDense``), ``Model`` prefixed when it would start with a digit, be empty or clash with a
    name the generated Java uses."""
    stem = os.path.basename(source_path or "")
    for extension in (".weights.h5", ".h5", ".hdf5", ".keras", ".onnx", ".pkl", ".pickle", ".pt", ".pth",
                      ".safetensors", ".npz", ".zip", ".p"):
        if stem.lower().endswith(extension):
            stem = stem[: -len(extension)]
            break
    words = re.findall(r"[A-Za-z0-9]+", stem)
    name = "".join(word[:1].upper() + word[1:] for word in words)[:64]
    if not name or name[0].isdigit():
        name = "Model" + name
    return name if usable_class(name) else name + "Model"


def java_names(model: Model, options: WriteOptions) -> JavaNames:
    """``--java-package`` and ``--java-class`` checked (exit 2 with the fix), or their defaults."""
    package = (options.java_package or "").strip()
    parts = package.split(".") if package else []
    if any(not IDENTIFIER.match(part) or part in JAVA_KEYWORDS for part in parts):
        raise UsageError(f"{{opt:java_package}} {package!r} is not a Java package name",
                         fix="Give dot-separated ASCII identifiers that are not Java keywords: com.example.model")
    if options.java_class is None:
        return JavaNames(package, class_name(options_source(model)))
    if not usable_class(options.java_class):
        raise UsageError(f"{{opt:java_class}} {options.java_class!r} is not a usable Java class name",
                         fix="Give an ASCII identifier that is not a Java keyword nor a java.lang or java.util "
                             "class name, e.g. DigitsModel")
    return JavaNames(package, options.java_class)


def options_source(model: Model) -> str:
    return model.source.path or ""


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write the project folder (see the module doc); an unsupported ``--emit-forward`` model or a bad
    name is refused before anything is written."""
    names = java_names(model, options)
    prepared = raw.prepare(model, options)
    manifest = prepared.manifest
    manifest["file"] = f"{names.name}.bin"
    manifest["java"] = {"package": names.package, "class": names.name}
    sources = java_files(names, model, prepared, bool(getattr(options, "emit_forward", False)))
    manifest["files"] = [names.resource("bin"), names.resource("json"), *sources]
    warnings: list[str] = []

    def weights(target: str) -> None:
        warnings.extend(raw.fill_weights(prepared, target, options.quiet))

    writers: dict[str, Callable[[str], None]] = {names.resource("bin"): weights,
                                                 names.resource("json"): text_writer(lambda: raw.manifest_text(manifest))}
    writers.update({relative: text_writer(lambda text=text: text) for relative, text in sources.items()})
    write_project(path, names.resource("json"), writers)
    return warnings


def text_writer(text: Callable[[], str]) -> Callable[[str], None]:
    def write_text(target: str) -> None:
        with open(target, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text())
    return write_text


def move_into_place(complete: str, path: str, force: bool) -> None:
    """A complete project (a validated staging copy) put at ``path`` as a direct write puts it: into an
    existing folder only the files its manifest lists, replacing only the previous output's files (see
    :mod:`weightport.formats.plain.project`); ``force`` was checked by the caller."""
    resources = os.path.join(complete, "src", "main", "resources")
    manifests = [os.path.relpath(os.path.join(folder, name), complete).replace(os.sep, "/")
                 for folder, _, names in os.walk(resources) for name in names if name.endswith(".json")]
    if len(manifests) != 1:
        raise ValueError(f"a staged java project holds {len(manifests)} manifests")
    move_project(complete, path, manifests[0])


def java_files(names: JavaNames, model: Model, prepared: Any, forward: bool) -> dict[str, str]:
    """Relative path -> text of every generated source (and the README snippet), in a fixed order."""
    out = fixed_sources(names)
    if forward:  # refuses unsupported layers before anything is written
        strings, code = ForwardWriter(model, prepared.plan, prepared.orders, prepared.manifest).parts()
        out[names.java()] = render(names, MODEL_FILE, strings, code)
    out[f"README.{names.name}.md"] = readme(names, prepared.manifest, forward)
    return out


def markdown_text(text: Any) -> str:
    """A name from the model file for the README: printable ASCII, no backtick (it is data, shown as is)."""
    return "".join(c if " " <= c <= "~" and c != "`" else "?" for c in str(text))


def readme(names: JavaNames, manifest: dict[str, Any], forward: bool) -> str:
    """The README snippet: where the files are and how a Maven, Gradle or javac build uses them."""
    q, c = names.qualified, names.name
    source, source_input = manifest["source"], manifest.get("input") or {}
    if forward:
        use = [f"{c} model = {c}.load();          // weights from the classpath (also: load(Path), "
               "load(InputStream, InputStream), load(threads))",
               f"float[] y = model.forward(x);      // one sample: {c}.INPUT_SIZE values in, {c}.OUTPUT_SIZE out",
               "float[][] ys = model.forward(batch);  // several samples"]
    else:
        use = [f"{c}Weights w = {c}Weights.load();  // weights from the classpath (also: load(Path), "
               "load(InputStream, InputStream))",
               "float[] k = w.tensor(\"NAME\").floats();  // row-major in the tensor's layout"]
    lines = [
        f"# {c}: converted by weightport {manifest['weightport_version']}",
        "",
        f"From `{markdown_text(source['file'])}` (SHA-256 `{source.get('sha256') or 'unknown'}`)."
        + (f" One input sample has shape {source_input.get('shape')}"
           f"{' (' + source_input['layout'] + ')' if source_input.get('layout') else ''}, row-major float32."
           if source_input else ""),
        "",
        *([f"- `{names.java()}`: the model, its forward pass in float32"] if forward else []),
        f"- `{names.java('Weights')}`: the loader (and a .npy reader)",
        f"- `{names.java('Check')}`: prints each tensor's name and sum",
        f"- `{names.resource('bin')}`, `{names.resource('json')}`: the weights and their manifest (classpath resources)",
        "",
        "Maven and Gradle build `src/main/java` and package `src/main/resources` as they are: copy both folders into "
        "your project (or convert with `-o` your project's root and `--force`, which only ever replaces the files "
        "listed in the manifest). Java 8 or later, no dependencies.",
        "",
        "```java",
        f"import {q};" if names.package else f"// {c} is in the unnamed package: give --java-package to import it",
        "",
        *use,
        "```",
        "",
        "Without a build tool:",
        "",
        "```sh",
        "javac -d classes $(find src/main/java -name '*.java')",
        f"java -cp classes:src/main/resources {q}{' input.npy' if forward else 'Check'}",
        "```",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- Java text from data

# ------------------------------------------------------------------------------------ --emit-forward

FORWARD_KINDS = ("input", "conv", "depthwise", "separable", "conv_transpose", "dense", "batchnorm", "activation", "prelu", "pool",
                 "global_pool", "flatten", "dropout", "padding", "cropping", "add", "multiply", "concat", "lstm", "gru",
                 "embedding", "power", "normalize", "softmax", "lrn")
MERGE_KINDS = ("add", "multiply", "concat")
SEQUENCE_KINDS = ("lstm", "gru", "embedding", "dense")  # take a (steps, features) sequence as it is
RNN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear", "hard_sigmoid")
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
        self.sequences: set[str] = set()  # Java variables holding a (steps, features) sequence, row-major

    def refuse(self, layer: Layer | None, why: str) -> UnsupportedError:
        where = f"layer {layer.name!r} ({layer.source_class or layer.kind}): " if layer is not None else ""
        return UnsupportedError(f"{{opt:emit_forward=True}}: {where}{why}",
                                fix="Drop {opt:emit_forward=True}; the weights and their manifest (with the loader) still "
                                    "hold every tensor and the layer attributes for your own forward pass")

    def tensor(self, layer: Layer, param: str, pack: str = "@T@", java_type: str = "float[]") -> tuple[str, Any]:
        """(field name, planned tensor) of one of the layer's tensors, loaded in the constructor (through
        ``pack``, a call wrapping ``@T@``, the loaded array)."""
        item = self.planned.get((layer.name, param))
        if item is None:
            raise self.refuse(layer, f"tensor {param!r} is missing")
        name = f"T{self.count}"
        self.count += 1
        shape = tuple(int(n) for n in item.shape)
        self.fields.append(f"    private final {java_type} {name};")
        load = (f"tensor(weights, {java_string_literal(item.key)}, {java_string_literal(item.layout.pattern)}, "
                f"{java_string_literal(item.layout.semantics)}, {java_ints(shape)})")
        self.loads.append(f"        {name} = {pack.replace('@T@', load)};")
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

    def conv_call(self, layer: Layer, shape: tuple[int, ...], param: str, bias: str, groups: int,
                  strides: list[int], dilations: list[int], pads: list[list[int]]) -> tuple[int, ...]:
        item = self.planned.get((layer.name, param))
        if item is None:
            raise self.refuse(layer, f"tensor {param!r} is missing")
        ws, kernel, out = self.kernel_strides(layer, item)
        flip = item.layout.semantics == CONVOLUTION
        weight = self.tensor(layer, param, f"packConv(@T@, {ws}, {out}, {shape[0] // groups}, {java_ints(kernel)}, "
                                           f"{'true' if flip else 'false'})")[0]
        rank = len(shape) - 1
        dims = [shape[0]] + pad3(list(shape[1:]), 1)
        flat_pads = [p for pair in [[0, 0]] * (3 - rank) + [list(p) for p in pads] for p in pair]
        spatial_out = []
        for n, k, s, d, (before, after) in zip(dims[1:], kernel, pad3(strides, 1), pad3(dilations, 1),
                                               zip(flat_pads[::2], flat_pads[1::2])):
            size = (n + before + after - (k - 1) * d - 1) // s + 1
            if size <= 0:
                raise self.refuse(layer, "the kernel does not fit the input")
            spatial_out.append(size)
        self.emit(f"x = conv(x, {java_ints(dims)}, {weight}, {bias}, {out}, {groups}, "
                  f"{java_ints(kernel)}, {java_ints(pad3(strides, 1))}, {java_ints(pad3(dilations, 1))}, "
                  f"{java_ints(flat_pads)}, par, tasks);"
                  + ("  // kernel stored for true convolution: packed rotated 180 degrees" if flip else ""))
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
                shape = self.conv_call(layer, shape, "depthwise.weight", "null", shape[0], strides, dilations, pads)
                bias = self.tensor(layer, "pointwise.bias")[0] if "pointwise.bias" in layer.tensors else "null"
                one = [1] * (len(shape) - 1)
                shape = self.conv_call(layer, shape, "pointwise.weight", bias, 1, one, one, [[0, 0]] * len(one))
            else:
                bias = self.tensor(layer, "bias")[0] if "bias" in layer.tensors else "null"
                groups = shape[0] if kind == "depthwise" else int(a.get("groups") or 1)
                if shape[0] % groups:
                    raise self.refuse(layer, f"{shape[0]} input channels do not split into {groups} groups")
                shape = self.conv_call(layer, shape, "weight", bias, groups, strides, dilations, pads)
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
            item = self.planned.get((layer.name, "weight"))
            if item is None:
                raise self.refuse(layer, "tensor 'weight' is missing")
            groups = parse_pattern(item.layout.pattern)
            item_shape = tuple(int(n) for n in item.shape)
            strides = group_strides(item_shape)
            o_axis = next(k for k, g in enumerate(groups) if g == ("o",))
            i_axis = 1 - o_axis
            if item_shape[i_axis] != shape[0]:
                raise self.refuse(layer, f"takes {item_shape[i_axis]} inputs, gets {shape[0]}")
            weight = self.tensor(layer, "weight", f"packDense(@T@, {java_ints([strides[o_axis], strides[i_axis]])}, "
                                                  f"{item_shape[o_axis]}, {item_shape[i_axis]})", "float[][]")[0]
            bias = self.tensor(layer, "bias")[0] if "bias" in layer.tensors else "null"
            self.emit(f"x = dense(x, {weight}, {bias}, {item_shape[o_axis]}, par, tasks);")
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
            if a.get("ceil_mode"):  # Caffe / Torch7: rounded up (the last window may pass the padded input)
                if any(before != after for before, after in pads):
                    raise self.refuse(layer, f"ceil-mode pooling with asymmetric pads {pads}")
                spatial = [ceil_pool_out(n, k, s, pair) for n, k, s, pair in zip(shape[1:], kernel, strides, pads)]
            else:
                spatial = [(n + before + after - k) // s + 1
                           for n, k, s, (before, after) in zip(shape[1:], kernel, strides, pads)]
            mode = a.get("mode")
            if mode not in ("max", "avg"):
                raise self.refuse(layer, f"pooling mode {mode!r}")
            self.emit(f"x = pool(x, {java_ints([shape[0]] + pad3(list(shape[1:]), 1))}, {java_ints(pad3(kernel, 1))}, "
                      f"{java_ints(pad3(strides, 1))}, {java_ints(flat_pads)}, {java_ints(pad3(spatial, 1))}, "
                      f"{'true' if mode == 'max' else 'false'}, {'true' if a.get('count_include_pad') else 'false'});")
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
        if kind == "power":  # Caffe Power
            numbers = [java_double(a.get(key, default), lambda why: self.refuse(layer, f"{key}: {why}"))
                       for key, default in (("power", 1.0), ("scale", 1.0), ("shift", 0.0))]
            self.emit(f"x = power(x, {', '.join(numbers)});")
            return shape
        if kind == "lrn":  # Caffe LRN, alpha over the window's size
            size = int(a["size"])
            if not is_map or size % 2 == 0:
                raise self.refuse(layer, "LRN needs a feature map and an odd local_size")
            numbers = [java_double(a.get(key, default), lambda why: self.refuse(layer, f"{key}: {why}"))
                       for key, default in (("alpha", 1.0), ("beta", 0.75), ("k", 1.0))]
            within = a.get("region") == "WITHIN_CHANNEL"
            self.emit(f"x = lrn(x, {java_ints([shape[0]] + pad3(list(shape[1:]), 1))}, {size}, {', '.join(numbers)}, "
                      f"{'true' if within else 'false'});")
            return shape
        if kind == "normalize":  # Torch7 nn.Normalize, SSD's L2 normalisation (its scale is a batch norm)
            if int(a.get("axis", 1)) != 1:
                raise self.refuse(layer, f"normalize over axis {a.get('axis')} (only the channels)")
            p = java_double(a["p"], lambda why: self.refuse(layer, f"p: {why}"))
            eps = java_double(a.get("eps", 0.0), lambda why: self.refuse(layer, f"eps: {why}"))
            self.emit(f"x = normalize(x, {shape[0]}, {p}, {eps}, {'true' if a.get('across_spatial') else 'false'});")
            return shape
        if kind == "softmax":  # over an axis: the channels only here (Torch7 nn.LogSoftMax, Caffe Softmax axis 1)
            if int(a.get("axis", 1)) != 1:
                raise self.refuse(layer, f"softmax over axis {a.get('axis')} (only the channels)")
            self.emit(f"x = softmax(x, {shape[0]}, {'true' if a.get('log') else 'false'});")
            return shape
        if kind in ("dropout", "input"):
            return shape
        raise self.refuse(layer, f"kind {kind!r} is not supported (supported: {', '.join(FORWARD_KINDS)})")

    def graph_step(self, layer: Layer, position: int, values: dict[str, tuple[str, tuple[int, ...]]]) -> tuple[int, ...]:
        """Emit one layer of the graph (any DAG: each output is kept in ``v<position>``); its output shape."""
        names = self.model.input_names(layer)
        missing = [name for name in names if name not in values]
        if layer.kind == "input" or missing or not names:
            raise self.refuse(layer, "a model with several inputs, or a layer fed by a later one, is not supported")
        inputs = [values[name] for name in names]
        self.sequence = False
        if layer.kind in MERGE_KINDS:
            if any(var in self.sequences for var, _ in inputs):
                raise self.refuse(layer, "merging sequences is not supported")
            return self.merge(layer, inputs)
        if len(inputs) != 1:
            raise self.refuse(layer, f"takes {len(inputs)} inputs")
        var, shape = inputs[0]
        self.emit(f"x = {var};")
        if var in self.sequences and layer.kind not in SEQUENCE_KINDS:  # (steps, features) -> (features, steps)
            self.emit(f"x = channelsFirst(x, {shape[1]}, {shape[0]});  // sequence -> map")
            shape = (shape[1], shape[0])
        if layer.kind in ("lstm", "gru") and var not in self.sequences:
            if len(shape) != 2:
                raise self.refuse(layer, f"needs a sequence, gets shape {shape}")
            self.emit(f"x = channelsLast(x, {shape[0]}, {shape[1]});  // map -> sequence")
            shape = (shape[1], shape[0])
        if layer.kind in SEQUENCE_KINDS and (var in self.sequences or layer.kind != "dense"):
            return self.sequence_layer(layer, shape)
        return self.layer(layer, shape)

    def sequence_layer(self, layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
        """An LSTM/GRU, Embedding or per-step Dense; sets ``self.sequence`` when the output is a sequence."""
        a = layer.attrs
        if layer.kind == "embedding":
            if a.get("mask_zero"):
                raise self.refuse(layer, "mask_zero=True: the layers after it skip masked steps, which this forward "
                                         "pass does not")
            if len(shape) != 1:
                raise self.refuse(layer, f"needs a vector of indices, gets shape {shape}")
            table, item = self.tensor(layer, "weight")
            rows, width = (int(n) for n in item.shape)
            if item.layout.pattern != "n e":
                raise self.refuse(layer, f"table layout {item.layout.pattern!r} is not (rows, width)")
            self.emit(f"x = embedding(x, {table}, {rows}, {width});")
            self.sequence = True
            return (shape[0], width)
        if layer.kind == "dense":
            steps, features = shape
            item = self.planned.get((layer.name, "weight"))
            if item is None or item.layout.pattern not in ("o i", "i o"):
                raise self.refuse(layer, "a per-step Dense needs an OI or IO weight")
            out = int(item.shape[0 if item.layout.pattern == "o i" else 1])
            ws = [features, 1] if item.layout.pattern == "o i" else [1, out]
            weight = self.tensor(layer, "weight", f"packDense(@T@, {java_ints(ws)}, {out}, {features})", "float[][]")[0]
            bias = self.tensor(layer, "bias")[0] if "bias" in layer.tensors else "null"
            self.emit(f"x = perStepDense(x, {steps}, {weight}, {bias}, {out}, par, tasks);")
            self.sequence = True
            if activation_name(a.get("activation")) not in ("linear", "relu", "sigmoid", "tanh"):
                raise self.refuse(layer, "a per-step Dense with this activation is not supported")
            self.activation(layer, a.get("activation"), (out,))
            return (steps, out)
        return self.recurrent(layer, shape)

    def recurrent(self, layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
        """An LSTM or GRU, one or two directions (Keras Bidirectional, merge_mode concat)."""
        a = layer.attrs
        steps, features = shape
        units = int(a["units"])
        if a.get("merge_mode") == "onnx":
            raise self.refuse(layer, "an ONNX LSTM/GRU node (sequence-major input, directions on their own axis) is "
                                     "not supported; Keras and Theano recurrent layers are")
        if a.get("bidirectional") and a.get("merge_mode") not in (None, "concat"):
            raise self.refuse(layer, f"bidirectional merge_mode {a.get('merge_mode')!r} (only concat)")
        acts = [self.rnn_activation(layer, a.get(key)) for key in ("activation", "recurrent_activation")]
        directions = ["", "_reverse"] if a.get("bidirectional") else [""]
        outputs = []
        for suffix in directions:
            names = [self.tensor(layer, f"{param}_l0{suffix}")[0] if f"{param}_l0{suffix}" in layer.tensors else "null"
                     for param in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            for param in ("weight_ih", "weight_hh"):
                if self.planned[(layer.name, f"{param}_l0{suffix}")].layout.pattern != "o i":
                    raise self.refuse(layer, f"{param} is not stored (gates * units, inputs)")
            reverse = bool(a.get("go_backwards")) != (suffix == "_reverse")
            outputs.append(f"recurrent(x, {steps}, {features}, {units}, {'true' if layer.kind == 'gru' else 'false'}, "
                           f"{'true' if a.get('reset_after', True) else 'false'}, {', '.join(names)}, "
                           f"{'true' if reverse else 'false'}, {java_string_literal(acts[0])}, "
                           f"{java_string_literal(acts[1])})")
        sequences = bool(a.get("return_sequences"))
        self.emit(f"x = rnnOutput({outputs[0]},\n                {outputs[1] if len(outputs) > 1 else 'null'}, "
                  f"{steps}, {units}, {'true' if sequences else 'false'});")
        self.sequence = sequences
        width = units * len(directions)
        return (steps, width) if sequences else (width,)

    def rnn_activation(self, layer: Layer, value: Any) -> str:
        """The Java name of an LSTM/GRU activation (hard_sigmoid as the source's Keras version defines it)."""
        name = activation_name(value)
        if name not in RNN_ACTIVATIONS:
            raise self.refuse(layer, f"recurrent activation {name!r} is not supported ({', '.join(RNN_ACTIVATIONS)})")
        if name != "hard_sigmoid":
            return name
        major = self.model.source.details.get("keras_major")
        if not self.model.source.format.startswith("keras") or major is None:
            raise self.refuse(layer, "hard_sigmoid from a source that does not say whose")
        return "hard_sigmoid_keras3" if int(major) >= 3 else "hard_sigmoid"  # x/6 + 0.5 in Keras 3, else 0.2x + 0.5

    def merge(self, layer: Layer, inputs: list[tuple[str, tuple[int, ...]]]) -> tuple[int, ...]:
        """Add, Multiply (equal shapes) or Concatenate (along a canonical axis) of several outputs."""
        arrays = "new float[][]{" + ", ".join(var for var, _ in inputs) + "}"
        shapes = [shape for _, shape in inputs]
        if layer.kind != "concat":
            if any(shape != shapes[0] for shape in shapes):
                raise self.refuse(layer, f"inputs of different shapes {shapes} (broadcasting is not supported)")
            self.emit(f"x = {'add' if layer.kind == 'add' else 'multiply'}({arrays});")
            return shapes[0]
        axis = layer.attrs.get("axis")
        if axis is None or not 0 <= int(axis) < len(shapes[0]) \
                or any(len(s) != len(shapes[0]) or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
                       for s in shapes):
            raise self.refuse(layer, f"concatenation of {shapes} along source axis {layer.attrs.get('source_axis')} "
                                     "(only along channels or features)")
        axis = int(axis)
        self.emit(f"x = concat({arrays}, {math.prod(shapes[0][:axis])});")
        return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1:]

    def parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """The template's string and code placeholders for this model."""
        model = self.model
        source_input = self.manifest.get("input")
        if not model.layers or model.layers[0].kind != "input" or source_input is None:
            raise self.refuse(None, "the model's input shape is not recorded in the source")
        shape = tuple(int(n) for n in source_input["canonical_shape"])
        channels_last = source_input["layout"] is not None and source_input["layout"].endswith("C") \
            and len(shape) >= 2
        if channels_last:
            self.emit(f"x = channelsFirst(x, {shape[0]}, {math.prod(shape[1:])});  // "
                      f"{source_input['layout']} -> C{source_input['layout'][:-1]}")
        values = {model.layers[0].name: ("v0", shape)}  # layer name -> (Java variable, shape) of its output
        self.emit("float[] v0 = x;")
        if source_input["layout"] is None and len(shape) == 2:  # (steps, features), as the source takes it
            self.sequences.add("v0")
        last = "v0"
        for position, layer in enumerate(model.layers[1:], 1):
            start = len(self.body)
            shape = self.graph_step(layer, position, values)
            # No name in a comment: the kind is one of FORWARD_KINDS (layer() refuses any other), the name
            # follows in check()'s string literal.
            self.body.insert(start, f"        // layer {position}: {layer.kind}")
            if layer.output_shape is not None and all(n is not None for n in layer.output_shape) \
                    and not self.sequence and layer.kind not in ("lstm", "gru") \
                    and tuple(int(n) for n in layer.output_shape) != shape:
                raise self.refuse(layer, f"computes shape {shape}, the source says {tuple(layer.output_shape)}")
            self.emit(f"check(x, {math.prod(shape)}, {java_string_literal(layer.name)});")
            self.emit(f"float[] v{position} = x;")
            values[layer.name] = (f"v{position}", shape)
            if self.sequence:
                self.sequences.add(f"v{position}")
            last = f"v{position}"
        output_layout = ""
        output_shape = list(shape)
        if last in self.sequences:
            output_layout = "TF"  # (steps, features), as the source gives it
        elif len(shape) >= 2 and channels_last:
            letters = "".join(("d", "h", "w")[3 - (len(shape) - 1):]).upper()
            self.emit(f"x = channelsLast(x, {shape[0]}, {math.prod(shape[1:])});  // C{letters} -> {letters}C")
            output_layout, output_shape = letters + "C", list(shape[1:]) + [shape[0]]
        elif len(shape) >= 2:
            output_layout = "C" + "".join(("d", "h", "w")[3 - (len(shape) - 1):]).upper()
        source = self.manifest["source"]
        strings = {
            "SOURCE": f"{source['file']} ({model.source.format} {model.source.version or ''}, backend "
                      f"{model.source.backend or 'unknown'})",
            "SOURCE_SHA256": source.get("sha256") or "",
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
        return strings, code


def generate_model(model: Model, plan: Any, chosen: Any, orders: dict[str, str], manifest: dict[str, Any],
                   names: JavaNames | None = None) -> str:
    """The model class for ``model`` (``WeightportModel`` unless ``names`` say otherwise); raises
    UnsupportedError (before anything is written) when a layer cannot be generated."""
    strings, code = ForwardWriter(model, plan, orders, manifest).parts()
    return render(names or JavaNames("", "WeightportModel"), MODEL_FILE, strings, code)


