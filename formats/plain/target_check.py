"""Checking a ``raw`` or ``java`` folder in its own runtime, reading it the way the manifest tells any
runtime to (docs/targets/plain-arrays.md), never through weightport's writer or layout code.

* :func:`locate` finds the manifest: ``manifest.json`` in a raw folder, ``src/main/resources/<package>/<C>.json``
  in a java project (the one whose source is the model checked, when the project holds several); its
  ``java`` field gives the package and class, its ``file`` the weights beside it.
* :class:`Folder` reads the weights by the manifest alone: each tensor's dtype, the byte order,
  offset, byte count and shape, its SHA-256, and the layout (``OIHW``, ``HWIO``, ``OHWI``, ``(IM)1HW``,
  ``(HWC)O``, ...) and semantics it declares.
* Each weighted layer is then run from those arrays with scipy (correlate or convolve as declared, a
  Dense fed its features in the order the manifest's Flatten gives) by
  :class:`weightport.formats.numpy.target_check.DeclaredSide`, against the source framework's oracle.
* With a JDK on PATH, a ``java`` project's own Java (``src/main/java/<package>/{C,CWeights,CCheck}.java``)
  is compiled (into a temporary folder, never into the output) and run: ``<package>.<C>Check MANIFEST``
  must read every tensor as the manifest says (the loader checks each SHA-256; the sums are compared), and
  the model class (``--emit-forward``), ``<package>.<C> --weights MANIFEST INPUT.npy``, runs the whole model
  in float32 on the recorded input, compared with the recorded output; without a recorded pair it runs on
  random input, which proves it runs and agrees with the folder, not that it computes the source's output.

These are the runtime's half of the check; the validator that runs them for both targets is the check
layer's (:mod:`weightport.checks.targets.plain`).  Here, a piece that cannot check raises
``NotImplementedError`` and one that finds the folder unusable raises :class:`weightport.core.oracle.Refused`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from weightport.core.describe import parse_json
from weightport.core.model import Layer, Model
from weightport.core.oracle import Refused
from weightport.formats.numpy.target_check import Declared
from weightport.formats.plain.java_text import JavaNames, fixed_sources, model_template

MANIFEST, WEIGHTS = "manifest.json", "weights.bin"
RESOURCES = os.path.join("src", "main", "resources")
DTYPES = ("float16", "float32", "float64")
BYTE_ORDERS = {"big": ">", "little": "<"}
JDK = ("javac", "java")
JAVA_TIMEOUT = 600


def sha256_of(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def java_manifests(root: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, manifest) of every java-target manifest under ``root/src/main/resources``: a weightport-raw
    manifest whose ``java`` package and class put it exactly where it is."""
    found = []
    for folder, _, names in sorted(os.walk(os.path.join(root, RESOURCES))):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not name.endswith(".json") or os.path.islink(path):
                continue
            try:
                with open(path, "rb") as handle:
                    manifest = parse_json(handle.read(), path, name)
            except (OSError, ValueError, WeightportError):
                continue
            names_ = java_names(manifest)
            if names_ is not None and os.path.normpath(os.path.join(root, names_.resource("json"))) == \
                    os.path.normpath(path):
                found.append((path, manifest))
    return found


def java_names(manifest: Any) -> JavaNames | None:
    """The package and class a java-target manifest names (None: not one)."""
    java = manifest.get("java") if isinstance(manifest, dict) and manifest.get("format") == "weightport-raw" else None
    if not isinstance(java, dict) or not isinstance(java.get("package"), str) or not isinstance(java.get("class"), str):
        return None
    parts = java["package"].split(".") if java["package"] else []
    if not all(re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", part) for part in parts + [java["class"]]):
        return None
    return JavaNames(java["package"], java["class"])


def locate(path: str, source_path: str | None = None) -> str:
    """The manifest of the output at ``path``: a raw folder's ``manifest.json``, else a java project's
    manifest (of the model read from ``source_path`` when the project holds several).  ValueError saying
    what is missing or ambiguous."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return os.path.join(path, MANIFEST)
    found = java_manifests(path)
    if len(found) > 1:
        digest = sha256_of(source_path)
        found = [item for item in found if (item[1].get("source") or {}).get("sha256") == digest] or found
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise ValueError(f"holds neither {MANIFEST} (a raw folder) nor a java project's manifest "
                         "(src/main/resources/<package>/<Class>.json)")
    raise ValueError(f"holds {len(found)} java manifests made from this source: "
                     + ", ".join(os.path.relpath(item[0], path) for item in found))


class Folder:
    """What a plain-array output holds, read by its manifest (a raw folder's, or a java project's): the
    manifest, each tensor by its name and by ``(layer, param)``, and what did not agree with the manifest
    (``problems``, ``bad_hashes``).  ``java``: the project's package and class (None for raw)."""

    def __init__(self, path: str, source_path: str | None = None) -> None:
        self.path = path
        self.manifest_path = manifest_path = locate(path, source_path)
        with open(manifest_path, "rb") as handle:
            self.manifest = parse_json(handle.read(), manifest_path, os.path.basename(manifest_path))
        manifest = self.manifest
        if not isinstance(manifest, dict) or manifest.get("format") != "weightport-raw" \
                or manifest.get("byte_order") not in BYTE_ORDERS or not isinstance(manifest.get("tensors"), list) \
                or not isinstance(manifest.get("layers"), list) or not isinstance(manifest.get("file"), str) \
                or os.path.basename(manifest["file"]) != manifest["file"] or manifest["file"] in ("", ".", ".."):
            raise ValueError(f"{os.path.basename(manifest_path)} is not a weightport-raw manifest (format, "
                             "byte_order, file, tensors, layers)")
        self.java = java_names(manifest) if manifest_path != os.path.join(path, MANIFEST) else None
        self.order = BYTE_ORDERS[manifest["byte_order"]]
        self.by_name: dict[str, Declared] = {}
        self.found: dict[tuple[str, str], Declared] = {}
        self.problems: list[str] = []
        self.bad_hashes: list[str] = []
        weights = os.path.join(os.path.dirname(manifest_path), manifest["file"])
        self.weights_name = manifest["file"]
        size = os.path.getsize(weights)
        with open(weights, "rb") as handle:
            for entry in manifest["tensors"]:
                self.read_tensor(handle, size, entry)
        self.layers = {entry.get("name"): entry for entry in manifest["layers"] if isinstance(entry, dict)}

    def read_tensor(self, handle: Any, size: int, entry: Any) -> None:
        """One manifest entry's array from ``weights.bin`` (a problem noted instead when it does not fit)."""
        keys = ("name", "layer", "param", "dtype", "layout", "semantics", "sha256")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in keys) \
                or not all(isinstance(entry.get(k), int) and entry[k] >= 0 for k in ("offset", "nbytes")) \
                or not isinstance(entry.get("shape"), list) \
                or not all(isinstance(n, int) and n >= 0 for n in entry["shape"]):
            self.problems.append(f"a manifest entry lacks {', '.join(keys)}, offset, nbytes or shape: "
                                 f"{str(entry)[:120]}")
            return
        name = entry["name"]
        if entry["dtype"] not in DTYPES:
            self.problems.append(f"{name}: dtype {entry['dtype']!r} is not one of {', '.join(DTYPES)}")
            return
        dtype = np.dtype(entry["dtype"]).newbyteorder(self.order)
        count = math.prod(entry["shape"])
        if count * dtype.itemsize != entry["nbytes"] or entry["offset"] + entry["nbytes"] > size:
            self.problems.append(f"{name}: {entry['nbytes']} bytes at {entry['offset']} do not hold shape "
                                 f"{entry['shape']} of {entry['dtype']} within {self.weights_name} ({size} bytes)")
            return
        handle.seek(entry["offset"])
        data = handle.read(entry["nbytes"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            self.bad_hashes.append(name)
        item = Declared(np.frombuffer(data, dtype, count).reshape(entry["shape"]), entry["layout"],
                        entry["semantics"])
        self.by_name[name] = item
        self.found[(entry["layer"], entry["param"])] = item

    def flatten_order(self, flatten: Layer, shape: tuple[int, ...]) -> str:
        """The order the manifest's Flatten layer gives (``chw``, ``hwc``, ...), channels-first when it says none."""
        attrs = (self.layers.get(flatten.name) or {}).get("attrs") or {}
        order = attrs.get("order")
        return order.lower() if isinstance(order, str) else "c" + "dhw"[3 - (len(shape) - 1):]

    def java_source(self, suffix: str) -> str:
        """Path of the project's ``<C><suffix>.java`` (``Weights``, ``Check``, "" for the model class)."""
        assert self.java is not None
        return os.path.join(self.path, *self.java.java(suffix).split("/"))

    def has_model(self) -> bool:
        return self.java is not None and os.path.isfile(self.java_source(""))

    def text(self, path: str) -> str:
        with open(path, "rb") as handle:
            return handle.read().decode("ascii", errors="replace")


def missing_jdk() -> list[str]:
    """The JDK tools not on PATH (none: the folder's Java can be compiled and run)."""
    return [tool for tool in JDK if shutil.which(tool) is None]


@contextmanager
def compiled_java(folder: Folder) -> Iterator[str]:
    """The folder's Java compiled into a temporary folder of classes (never into the output), removed after;
    Refused with javac's last lines when it does not compile."""
    sources = [folder.java_source(suffix) for suffix in ("Weights", "Check", "") if os.path.isfile(folder.java_source(suffix))]
    with tempfile.TemporaryDirectory(prefix="weightport-java-") as classes:
        compiled = run(["javac", "-nowarn", "-proc:none", "-encoding", "US-ASCII", "-d", classes, *sources])
        if compiled.returncode != 0:
            raise Refused(tail(compiled.stderr))
        yield classes


# What the model class may hold where its template has placeholders (formats/plain/java/): string literals
# as weightport writes them (printable ASCII, escapes, \uXXXX only beyond ASCII), int lists, and field,
# load and forward-pass lines made only of the template's own methods, the generated variables (T0, v1,
# x, ...), literals and punctuation: no member access, so no call outside the template's code.
LITERAL = r'"(?:[ !#-\[\]-~]|\\[btnfr"\\]|\\[0-3][0-7]{2}|\\u[0-9a-fA-F]{4})*"'
PLACEHOLDER = re.compile(r'"@@(\w+)@@"|^[ \t]*/\*@(\w+)@\*/$|/\*@(\w+)@\*/', re.M)
COMMENT = re.compile(r"  // [A-Za-z0-9 ,:>()_-]*$|^ *// layer \d+: [a-z_]+$")
TOKEN = re.compile(r"\s+|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?[fF]?|[A-Za-z_][A-Za-z0-9_]*|[(){}\[\],;=-]")
WORDS = frozenset("x weights par tasks null true false new float int double private final".split())
VARIABLE = re.compile(r"[Tv]\d+")


def template_methods(template: str) -> frozenset[str]:
    """The static methods the model template defines (what generated lines may call)."""
    return frozenset(re.findall(r"^    (?:private |public )?static [A-Za-z\[\]<>]+ ([a-z][A-Za-z0-9]*)\(", template,
                                re.M)) - {"main"}


def generated_line(line: str, methods: frozenset[str]) -> bool:
    """Whether a line where the template has FIELDS, LOADS or BODY is made of what weightport generates."""
    code = COMMENT.sub("", re.sub(LITERAL, " S ", line))
    at, words = 0, []
    while at < len(code):
        match = TOKEN.match(code, at)
        if match is None:
            return False
        words.append(match.group(0))
        at = match.end()
    return all(not word[:1].isalpha() or word in WORDS or word in methods or VARIABLE.fullmatch(word) or word == "S"
               for word in words)


def foreign_java(folder: Folder) -> str:
    """Why the project's Java is not what weightport emits ("" when it is): the loader and checker must be
    the files this weightport writes for the manifest's package and class, and the model class its template
    with only weightport-shaped code where the placeholders are.  An output is data: the Java in it is run
    only when it is weightport's own."""
    assert folder.java is not None
    for relative, expected in fixed_sources(folder.java).items():
        path = os.path.join(folder.path, *relative.split("/"))
        if not os.path.isfile(path) or folder.text(path) != expected:
            return f"{relative} differs from the one this weightport writes"
    if not folder.has_model():
        return ""
    shown = folder.java.java()
    text = folder.text(folder.java_source(""))
    template = model_template(folder.java)
    methods = template_methods(template)
    parts, kinds, at = [], [], 0
    for match in PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[at:match.start()]))
        string, line, inline = match.groups()
        kinds.append(line or "")
        parts.append(f"({LITERAL})" if string else "((?:[^\n]*\n)*?[^\n]*)" if line else r"((?:\d+(?:, \d+)*)?)")
        at = match.end()
    found = re.fullmatch("".join(parts) + re.escape(template[at:]), text) if text.isascii() else None
    if found is None:
        return f"{shown} is not weightport's template filled in"
    for kind, value in zip(kinds, found.groups()):
        if kind and value and not all(generated_line(line, methods) for line in value.split("\n")):
            return f"{shown} holds code weightport does not generate"
    for escape in re.finditer(r"(\\+)u+([0-9a-fA-F]{4})", text):  # javac reads these before anything else
        if len(escape.group(1)) % 2 and int(escape.group(2), 16) < 0x80:
            return f"{shown} holds a \\u escape of an ASCII character"
    return ""


def run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=JAVA_TIMEOUT, errors="replace")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"{command[0]} took more than {JAVA_TIMEOUT} s")


def tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[:600] or "no message"


NUMBER = re.compile(r" ([-+]?(?:\d\.\d+e[-+]\d+|NaN|Infinity))$", re.MULTILINE)


def wrong_sums(folder: Folder, classes: str) -> list[str]:
    """``java <package>.<C>Check MANIFEST``: every SHA-256 checked by the Java loader, and each tensor's sum
    as Java reads it compared with numpy's sum of the array read by the manifest; the tensors whose sums
    differ.  Refused when the program fails; NotImplementedError when its sums cannot be paired with the
    tensors."""
    assert folder.java is not None
    result = run(["java", "-cp", classes, folder.java.qualified + "Check", folder.manifest_path])
    if result.returncode != 0:
        raise Refused(tail(result.stderr))
    sums = [float(value) for value in NUMBER.findall(result.stdout)]
    names = [entry.get("name") for entry in folder.manifest["tensors"] if isinstance(entry, dict)]
    if len(sums) != len(names):
        raise NotImplementedError(f"{folder.java.name}Check printed {len(sums)} sums for {len(names)} tensors "
                                  "(names holding line ends cannot be paired with their sums)")
    wrong = []
    for name, value in zip(names, sums):
        item = folder.by_name.get(name)
        if item is None:
            continue
        values = np.asarray(item.array, dtype=np.float64)
        if not np.isclose(value, float(np.sum(values)), rtol=0.0, atol=1e-8 * float(np.sum(np.abs(values))) + 1e-300,
                          equal_nan=True):
            wrong.append(f"{name} (Java {value:.9e}, numpy {float(np.sum(values)):.9e})")
    return wrong


NPY_INPUTS = (np.float32, np.float64, np.float16, np.int32, np.int64)  # what the Java .npy reader takes


def java_forward(folder: Folder, classes: str, x: np.ndarray) -> np.ndarray:
    """``java <package>.<C> --weights MANIFEST INPUT.npy`` on the batch ``x`` (source layout, float32 in
    Java): one row per sample; Refused saying what went wrong."""
    assert folder.java is not None
    data = os.path.join(classes, "input.npy")
    x = np.asarray(x)
    np.save(data, x if x.dtype.type in NPY_INPUTS else x.astype(np.float64))
    result = run(["java", "-cp", classes, folder.java.qualified, "--weights", folder.manifest_path, data])
    name = folder.java.name
    if result.returncode != 0:
        raise Refused(f"{name} failed: {tail(result.stderr)}")
    try:
        rows = [[float(v) for v in line.split()] for line in result.stdout.splitlines() if line.strip()]
        return np.array(rows, dtype=np.float64)
    except ValueError:
        raise Refused(f"{name} printed something other than numbers: {tail(result.stdout)}") from None


def random_run(folder: Folder, classes: str, source: Model) -> None:
    """Run the model class on two random samples: it must accept the folder and print finite rows of the size
    the source's last layer gives (Refused saying how it did not).  No reference: this covers no layer.
    NotImplementedError when the manifest records no input shape."""
    shape = (folder.manifest.get("input") or {}).get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise NotImplementedError("the manifest records no input shape")
    got = java_forward(folder, classes, np.random.default_rng(0).uniform(-1.0, 1.0, (2, *shape)).astype(np.float32))
    last = source.layers[-1].output_shape if source.layers else None
    size = math.prod(int(n) for n in last) if last and all(n is not None for n in last) else None
    if got.ndim != 2 or got.shape[0] != 2 or (size is not None and got.shape[1] != size):
        raise Refused(f"printed {got.shape} values for 2 samples" + (f" of {size} outputs" if size else ""))
    if not np.all(np.isfinite(got)):
        raise Refused("printed values that are not finite")
