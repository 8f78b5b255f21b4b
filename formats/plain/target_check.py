"""Checking a ``raw`` or ``java`` folder in its own runtime, reading it the way the manifest tells any
runtime to (docs/targets/plain-arrays.md), never through weightport's writer or layout code.

* :class:`Folder` reads ``weights.bin`` by ``manifest.json`` alone: each tensor's dtype, the byte order,
  offset, byte count and shape, its SHA-256, and the layout (``OIHW``, ``HWIO``, ``OHWI``, ``(IM)1HW``,
  ``(HWC)O``, ...) and semantics it declares.
* Each weighted layer is then run from those arrays with scipy (correlate or convolve as declared, a
  Dense fed its features in the order the manifest's Flatten gives) by
  :class:`weightport.formats.numpy.target_check.DeclaredSide`, against the source framework's oracle.
* With a JDK on PATH, a ``java`` folder's own Java is compiled (into a temporary folder, never into the
  output) and run: ``WeightportCheck --verify`` must read every tensor as the manifest says (SHA-256 and
  sums), and ``WeightportModel`` (``--emit-forward``) runs the whole model on the recorded input, compared
  with the recorded output; without a recorded pair it runs on random input, which proves it runs and
  agrees with the folder, not that it computes the source's output.

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
from importlib import resources
from typing import Any

import numpy as np

from weightport.core.describe import parse_json
from weightport.core.model import Layer, Model
from weightport.core.oracle import Refused
from weightport.formats.numpy.target_check import Declared

MANIFEST, WEIGHTS = "manifest.json", "weights.bin"
JAVA_LOADER, JAVA_CHECK, JAVA_MODEL = "WeightportWeights.java", "WeightportCheck.java", "WeightportModel.java"
DTYPES = ("float16", "float32", "float64")
BYTE_ORDERS = {"big": ">", "little": "<"}
JDK = ("javac", "java")
JAVA_TIMEOUT = 600


class Folder:
    """What a plain-array folder holds, read by its manifest: the manifest, each tensor by its name and by
    ``(layer, param)``, and what did not agree with the manifest (``problems``, ``bad_hashes``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        manifest_path = os.path.join(path, MANIFEST)
        with open(manifest_path, "rb") as handle:
            self.manifest = parse_json(handle.read(), manifest_path, MANIFEST)
        manifest = self.manifest
        if not isinstance(manifest, dict) or manifest.get("format") != "weightport-raw" \
                or manifest.get("byte_order") not in BYTE_ORDERS or not isinstance(manifest.get("tensors"), list) \
                or not isinstance(manifest.get("layers"), list):
            raise ValueError("manifest.json is not a weightport-raw manifest (format, byte_order, tensors, layers)")
        self.order = BYTE_ORDERS[manifest["byte_order"]]
        self.by_name: dict[str, Declared] = {}
        self.found: dict[tuple[str, str], Declared] = {}
        self.problems: list[str] = []
        self.bad_hashes: list[str] = []
        weights = os.path.join(path, WEIGHTS)
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
                                 f"{entry['shape']} of {entry['dtype']} within weights.bin ({size} bytes)")
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

    def has(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name))

    def text(self, name: str) -> str:
        with open(os.path.join(self.path, name), "rb") as handle:
            return handle.read().decode("ascii", errors="replace")


def missing_jdk() -> list[str]:
    """The JDK tools not on PATH (none: the folder's Java can be compiled and run)."""
    return [tool for tool in JDK if shutil.which(tool) is None]


@contextmanager
def compiled_java(folder: Folder) -> Iterator[str]:
    """The folder's Java compiled into a temporary folder of classes (never into the output), removed after;
    Refused with javac's last lines when it does not compile."""
    sources = [os.path.join(folder.path, name) for name in (JAVA_LOADER, JAVA_CHECK, JAVA_MODEL) if folder.has(name)]
    with tempfile.TemporaryDirectory(prefix="weightport-java-") as classes:
        compiled = run(["javac", "-nowarn", "-proc:none", "-encoding", "US-ASCII", "-d", classes, *sources])
        if compiled.returncode != 0:
            raise Refused(tail(compiled.stderr))
        yield classes


# What WeightportModel.java may hold where its template has placeholders (formats/plain/java/): string
# literals as weightport writes them (printable ASCII, escapes, \uXXXX only beyond ASCII), int lists, and
# field, load and forward-pass lines calling the template's own static methods on literal arguments.
LITERAL = r'"(?:[ !#-\[\]-~]|\\[btnfr"\\]|\\[0-3][0-7]{2}|\\u[0-9a-fA-F]{4})*"'
INTS = r"new int\[\]\{(?:-?\d+(?:, -?\d+)*)?\}"
ARGUMENT = rf"(?:{INTS}|T\d+|null|true|false|x|{LITERAL}|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
METHODS = "conv|convTranspose|pool|globalPool|dense|batchnorm|prelu|activation|channelsFirst|channelsLast|zeroPad|crop"
PLACEHOLDER = re.compile(r'"@@(\w+)@@"|^[ \t]*/\*@(\w+)@\*/$|/\*@(\w+)@\*/', re.M)
GENERATED_LINES = {
    "FIELDS": re.compile(r"    private final double\[\] T\d+;"),
    "LOADS": re.compile(rf"        T\d+ = tensor\(weights, {LITERAL}, {LITERAL}, {LITERAL}, {INTS}\);"),
    "BODY": re.compile(rf"        (?:// layer \d+: [a-z_]+|check\(x, \d+, {LITERAL}\);"
                       rf"|x = (?:{METHODS})\(x(?:, {ARGUMENT})*\);(?:  // [A-Za-z0-9 ,:>()-]*)?)"),
}


def shipped_java(name: str) -> str:
    """A Java file as this weightport ships it (package data of weightport.formats.plain)."""
    return (resources.files("weightport.formats.plain") / "java" / name).read_text(encoding="utf-8")


def foreign_java(folder: Folder) -> str:
    """Why the folder's Java is not what weightport emits ("" when it is): the loader and checker must be the
    shipped files, and WeightportModel.java the shipped template with only weightport-shaped code where its
    placeholders are.  A folder is data: the Java in it is run only when it is weightport's own."""
    for name in (JAVA_LOADER, JAVA_CHECK):
        if not folder.has(name) or folder.text(name) != shipped_java(name):
            return f"{name} differs from the one this weightport ships"
    if not folder.has(JAVA_MODEL):
        return ""
    text = folder.text(JAVA_MODEL)
    template = shipped_java(JAVA_MODEL)
    parts, kinds, at = [], [], 0
    for match in PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[at:match.start()]))
        string, line, inline = match.groups()
        kinds.append(line or "")
        parts.append(f"({LITERAL})" if string else "((?:[^\n]*\n)*?[^\n]*)" if line else r"((?:\d+(?:, \d+)*)?)")
        at = match.end()
    found = re.fullmatch("".join(parts) + re.escape(template[at:]), text) if text.isascii() else None
    if found is None:
        return f"{JAVA_MODEL} is not weightport's template filled in"
    for kind, value in zip(kinds, found.groups()):
        if kind and value and not all(GENERATED_LINES[kind].fullmatch(line) for line in value.split("\n")):
            return f"{JAVA_MODEL} holds code weightport does not generate"
    for escape in re.finditer(r"(\\+)u+([0-9a-fA-F]{4})", text):  # javac reads these before anything else
        if len(escape.group(1)) % 2 and int(escape.group(2), 16) < 0x80:
            return f"{JAVA_MODEL} holds a \\u escape of an ASCII character"
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
    """``java WeightportCheck DIR --verify``: every SHA-256 checked in Java, and each tensor's sum as Java
    reads it compared with numpy's sum of the array read by the manifest; the tensors whose sums differ.
    Refused when the program fails; NotImplementedError when its sums cannot be paired with the tensors."""
    result = run(["java", "-cp", classes, "WeightportCheck", folder.path, "--verify"])
    if result.returncode != 0:
        raise Refused(tail(result.stderr))
    sums = [float(value) for value in NUMBER.findall(result.stdout)]
    names = [entry.get("name") for entry in folder.manifest["tensors"] if isinstance(entry, dict)]
    if len(sums) != len(names):
        raise NotImplementedError(f"WeightportCheck printed {len(sums)} sums for {len(names)} tensors (names "
                                  "holding line ends cannot be paired with their sums)")
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


def java_forward(folder: Folder, classes: str, x: np.ndarray) -> np.ndarray:
    """``java WeightportModel DIR INPUT.bin float64`` on the batch ``x`` (source layout): one row per sample;
    Refused saying what went wrong."""
    data = os.path.join(classes, "input.bin")
    np.asarray(x).astype(np.dtype(np.float64).newbyteorder(folder.order)).tofile(data)
    result = run(["java", "-cp", classes, "WeightportModel", folder.path, data, "float64"])
    if result.returncode != 0:
        raise Refused(f"WeightportModel failed: {tail(result.stderr)}")
    try:
        rows = [[float(v) for v in line.split()] for line in result.stdout.splitlines() if line.strip()]
        return np.array(rows, dtype=np.float64)
    except ValueError:
        raise Refused(f"WeightportModel printed something other than numbers: {tail(result.stdout)}") from None


def random_run(folder: Folder, classes: str, source: Model) -> None:
    """Run WeightportModel on two random samples: it must accept the folder and print finite rows of the size
    the source's last layer gives (Refused saying how it did not).  No reference: this covers no layer.
    NotImplementedError when the manifest records no input shape."""
    shape = (folder.manifest.get("input") or {}).get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
        raise NotImplementedError("the manifest records no input shape")
    got = java_forward(folder, classes, np.random.default_rng(0).uniform(-1.0, 1.0, (2, *shape)))
    last = source.layers[-1].output_shape if source.layers else None
    size = math.prod(int(n) for n in last) if last and all(n is not None for n in last) else None
    if got.ndim != 2 or got.shape[0] != 2 or (size is not None and got.shape[1] != size):
        raise Refused(f"printed {got.shape} values for 2 samples" + (f" of {size} outputs" if size else ""))
    if not np.all(np.isfinite(got)):
        raise Refused("printed values that are not finite")
