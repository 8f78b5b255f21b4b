"""The ``raw`` target: plain arrays any runtime can read (C, Java, JavaScript, ...).

``weightport convert SRC -o DIR --to raw`` writes a folder:

* ``weights.bin``: every tensor back to back, each starting at a multiple of 8
  bytes (zero padding between), in ``--dtype`` (float32, float64, float16) and
  ``--byte-order`` (big by default, what Java's DataInputStream reads).
* ``manifest.json``: byte order, dtype, source, the layers with the
  attributes a runtime needs (kernel size, strides, per-side pads, dilations,
  groups, activation, ...), and per tensor, in file order: name (the torch
  target's key), layer, kind, shape, dtype, offset, nbytes, layout,
  semantics, sha256.  The schema is in ``docs/targets/plain-arrays.md``.

``--layout`` chooses the axis order of convolution kernels (``OIHW``,
``HWIO``, ``OHWI``, ...; spatial letters stand for the kernel's spatial axes
of any rank) and dense weights (``OI`` or ``IO``), and whether the runtime's
feature maps are channels-first or channels-last (which orders the rows of a
Dense after Flatten).  ``--target-semantics`` chooses correlation (the
default: the kernel slides as stored) or convolution (stored rotated 180
degrees for a runtime that flips).  Every permutation and flip is a
:class:`weightport.core.layout.Relayout` step of the plan.

The folder is built beside the destination and renamed into place, so a
failure leaves the previous output or nothing.

The ``java`` target (:mod:`weightport.formats.plain.java`) writes the same
folder plus Java sources through :func:`prepare` and :func:`write_folder`; this
module never imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from weightport.core.version import __version__
from weightport.core.atomic import check_can_write, check_free_space, current_umask, fsync_folder, staging_folder
from weightport.core.describe import jsonable
from weightport.core.errors import BadInputError, OutputExistsError, UsageError
from weightport.core.layout import CORRELATION, Layout, NO_SEMANTICS, parse_pattern, SPATIAL_AXES
from weightport.core.steps import Relayout
from weightport.core.model import Layer, Model, state_key
from weightport.core.options import WriteOptions
from weightport.core.plan import Plan, PlannedTensor, renamed
from weightport.core.progress import Progress
from weightport.core.streaming import stored_slices, write_hashed, write_in_background
from weightport.core.shapes import flatten_patterns, flattened_map_shape

NAME = "raw"
DESCRIPTION = "plain arrays for any runtime (folder: weights.bin + manifest.json)"
EXTENSIONS = ("",)

FORMAT_ID = "weightport-raw"
FORMAT_VERSION = 1
ALIGNMENT = 8
DTYPES = ("float32", "float64", "float16")
BYTE_ORDERS = {"big": ">", "little": "<"}
WEIGHTS_FILE = "weights.bin"
MANIFEST_FILE = "manifest.json"

KERNEL_KINDS = ("conv", "conv_transpose", "depthwise", "separable")
KERNEL_PARAMS = ("weight", "depthwise.weight", "pointwise.weight")


def sniff(path: str) -> bool:
    return False


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LayoutChoice:
    """What ``--layout`` asked for.

    ``kernel``: the letter order of convolution kernels with the spatial axes
    as one ``"S"`` token (``("O", "I", "S")`` for OIHW), or None to keep each
    kernel's canonical order.  ``dense``: ``("O", "I")`` or ``("I", "O")``, or
    None for the canonical ``OI``.  ``channels_last``: the runtime's feature
    maps are channels-last (Flatten yields H, W, C order).
    """

    kernel: tuple[str, ...] | None = None
    dense: tuple[str, ...] | None = None
    channels_last: bool = False
    kernel_text: str | None = None

    @property
    def feature_layout(self) -> str:
        return "channels_last" if self.channels_last else "channels_first"


FEATURE_ORDERS = ("CW", "WC", "CHW", "HWC", "CDHW", "DHWC")
LAYOUT_FIX = ("Give a kernel order such as OIHW, HWIO or OHWI, optionally with a dense order (OI or IO) and a "
              "feature order (CHW or HWC), comma-separated: {opt:layout=HWIO,IO,HWC}")


def parse_layout(text: str | None) -> LayoutChoice:
    """Parse ``--layout`` (see :class:`LayoutChoice` and the module docstring)."""
    if text is None or not text.strip():
        return LayoutChoice()
    kernel = dense = kernel_text = None
    channels_last: bool | None = None
    for raw in text.split(","):
        item = raw.replace(" ", "").upper()
        if not item:
            continue
        if item in ("OI", "IO"):
            dense = tuple(item)
        elif item in FEATURE_ORDERS:
            channels_last = item.endswith("C")
        else:
            kernel, kernel_text = parse_kernel_order(item, raw), item
    if kernel is not None and dense is None:
        dense = tuple(letter for letter in kernel if letter in "OI")
    if channels_last is None:
        channels_last = kernel is not None and kernel.index("I") > kernel.index("S")
    return LayoutChoice(kernel, dense, channels_last, kernel_text)


def parse_kernel_order(item: str, raw: str) -> tuple[str, ...]:
    letters = list(item)
    spatial = [k for k, letter in enumerate(letters) if letter in "DHW"]
    if (sorted(letters.count(x) for x in "OI") != [1, 1] or not spatial
            or any(letter not in "OIDHW" for letter in letters) or len(set(letters)) != len(letters)
            or spatial != list(range(spatial[0], spatial[0] + len(spatial)))
            or [letters[k] for k in spatial] != [x for x in "DHW" if x in letters]):
        raise UsageError(f"{{opt:layout}} {raw.strip()!r} is not an axis order of O, I and spatial letters D, H, W",
                         fix=LAYOUT_FIX)
    out = [letter for letter in letters if letter not in "DHW"]
    out.insert(spatial[0], "S")
    return tuple(out)


@dataclass(frozen=True)
class RawSettings:
    dtype: np.dtype           # with the byte order
    dtype_name: str
    byte_order: str
    layout: LayoutChoice
    semantics: str


def settings(options: WriteOptions) -> RawSettings:
    dtype = options.dtype or "float32"
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is not available for plain arrays", fix=f"Use one of: {', '.join(DTYPES)}")
    order = options.byte_order or "big"
    if order not in BYTE_ORDERS:
        raise UsageError(f"byte order {order!r}", fix="Use big or little")
    semantics = options.target_semantics or CORRELATION
    if semantics not in ("correlation", "convolution"):
        raise UsageError(f"unknown semantics {semantics!r}", fix="Use convolution or correlation")
    return RawSettings(np.dtype(dtype).newbyteorder(BYTE_ORDERS[order]), dtype, order, parse_layout(options.layout),
                       semantics)


# ------------------------------------------------------------------------------------------------ plan


def render(group: tuple[str, ...]) -> str:
    if not group:
        return "1"
    return group[0] if len(group) == 1 else "(" + " ".join(group) + ")"


def channel_role(group: tuple[str, ...]) -> str | None:
    """``O`` or ``I`` for the first two groups of a kernel pattern (depthwise ``(i m) 1``: O, I)."""
    if "o" in group or "m" in group:
        return "O"
    if group in (("i",), ()):
        return "I"
    return None


def kernel_target_pattern(canonical: str, order: tuple[str, ...] | None) -> str:
    """The pattern of a conv-family kernel in the runtime's letter ``order`` (None: canonical).

    ``O``/``I`` are the layer's output/input channel groups as the canonical
    pattern names them (depthwise ``(i m)`` is O and its ``1`` is I); ``S`` is
    every spatial axis in canonical order (``1`` for a pointwise kernel).
    """
    groups = parse_pattern(canonical)
    if order is None or len(groups) < 3:
        return canonical
    roles = {channel_role(groups[0]): groups[0], channel_role(groups[1]): groups[1]}
    if set(roles) != {"O", "I"}:
        return canonical
    spatial = " ".join(render(g) for g in groups[2:])
    return " ".join(spatial if letter == "S" else render(roles[letter]) for letter in order)


def depth_multiplier(layer: Layer, tensor_shape: tuple[int, ...]) -> int:
    """Known size of ``m`` in a depthwise ``(i m)`` group (1 is harmless when unknown: the group stays whole)."""
    a = layer.attrs
    if a.get("depth_multiplier"):
        return int(a["depth_multiplier"])
    if a.get("in_channels") and tensor_shape and tensor_shape[0] % int(a["in_channels"]) == 0:
        return tensor_shape[0] // int(a["in_channels"])
    return 1


def spatial_letters(rank: int) -> list[str]:
    return list(SPATIAL_AXES[3 - rank:]) if 1 <= rank <= 3 else []


def flatten_orders(model: Model, choice: LayoutChoice) -> dict[str, str]:
    """Per Flatten layer, the element order it produces in the runtime: ``chw`` or ``hwc`` (``cw``, ``dhwc``, ...)."""
    orders: dict[str, str] = {}
    for position, layer in enumerate(model.layers):
        if layer.kind != "flatten":
            continue
        names = layer.inputs or ([model.layers[position - 1].name] if position else [])
        before = next((l for l in model.layers if names and l.name == names[0]), None)
        shape = before.output_shape if before is not None else None
        if shape is None or len(shape) < 2:
            orders[layer.name] = "hwc" if choice.channels_last else "chw"
            continue
        spatial = "".join(spatial_letters(len(shape) - 1))
        orders[layer.name] = spatial + "c" if choice.channels_last else "c" + spatial
    return orders


def raw_plan(model: Model, options: WriteOptions) -> Plan:
    """Plan for the plain-array target: torch keys, ``--layout`` axis orders, ``--target-semantics`` kernels.

    Canonical tensors without a runtime layout choice (biases, batch norm
    vectors, embeddings, RNN weights in PyTorch gate order) are written as
    they are; the PyTorch-only ``num_batches_tracked`` counter is left out.
    """
    chosen = settings(options)
    choice, semantics = chosen.layout, chosen.semantics
    warnings = list(model.warnings)
    planned: list[PlannedTensor] = []

    def add(layer: Layer, param: str, dst_pattern: str | None = None, known: tuple[tuple[str, int], ...] = (),
            src_pattern: str | None = None) -> None:
        tensor = layer.tensors[param]
        src = tensor.layout if src_pattern is None else Layout(src_pattern, tensor.layout.semantics)
        dst_semantics = semantics if src.semantics != NO_SEMANTICS else NO_SEMANTICS
        dst = Layout(src.pattern if dst_pattern is None else dst_pattern, dst_semantics)
        steps = () if dst == tensor.layout else (Relayout(src, dst, known),)
        key = renamed(state_key(layer.name, param), options.rename, getattr(options, "rename_patterns", None))
        planned.append(PlannedTensor(key, layer, param, tensor, steps, dst))

    for layer in model.layers:
        for param, tensor in layer.tensors.items():
            pattern = tensor.layout.pattern
            if layer.kind in KERNEL_KINDS and param in KERNEL_PARAMS and len(parse_pattern(pattern)) >= 3:
                known = (("m", depth_multiplier(layer, tensor.shape)),) if "m" in tensor.layout.axes else ()
                add(layer, param, kernel_target_pattern(pattern, choice.kernel), known)
            elif layer.kind == "dense" and param == "weight" and parse_pattern(pattern) == (("o",), ("i",)):
                dst_pattern, known, src_pattern = dense_target(model, layer, choice, warnings)
                add(layer, param, dst_pattern, known, src_pattern)
            elif layer.kind == "prelu" and choice.channels_last and len(tensor.layout.axes) > 1 \
                    and tensor.layout.axes[0] == "c":
                groups = parse_pattern(pattern)
                add(layer, param, " ".join(render(g) for g in groups[1:] + groups[:1]))
            else:
                add(layer, param)
    keys = [p.key for p in planned]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise UsageError(f"two tensors map to the same name: {', '.join(duplicates)}", fix="Fix the {opt:rename} map")
    return Plan("raw", planned, warnings)


def dense_target(model: Model, layer: Layer, choice: LayoutChoice,
                 warnings: list[str]) -> tuple[str, tuple[tuple[str, int], ...], str]:
    """(target pattern, known sizes, source pattern) of a dense weight: ``--layout``'s OI/IO order; after a
    Flatten of a map its input axis is spelled out, ``(c h w)`` canonically, in the runtime's flatten order
    (``(h w c)`` for channels-last feature maps: the rows are reordered)."""
    order = choice.dense or ("O", "I")
    shape = flattened_map_shape(model, layer)
    inputs_count = layer.tensors["weight"].shape[1]
    if shape and math.prod(shape) != inputs_count:
        warnings.append(f"layer {layer.name!r}: the Flatten before it yields {math.prod(shape)} values by shape "
                        f"inference but the Dense takes {inputs_count}; its rows are written as they are")
        shape = None
    if shape is None and choice.channels_last:
        warnings.append(f"layer {layer.name!r}: Dense after Flatten with unknown map shape; its inputs stay in "
                        "C,H,W order although --layout asked for channels-last feature maps")
    if not shape:
        return " ".join(order).lower(), (), "o i"
    channels_last, channels_first, known = flatten_patterns(shape)
    inputs = channels_last if choice.channels_last else channels_first
    pattern = " ".join(inputs if letter == "I" else "o" for letter in order)
    return pattern, known, f"o {channels_first}"


# --------------------------------------------------------------------------------------------- writing


@dataclass
class Prepared:
    """What a plain-array folder is written from, all known before anything is written: the settings,
    the plan, each Flatten's order and the manifest (its tensors are filled in as they are written)."""

    chosen: RawSettings
    plan: Plan
    orders: dict[str, str]
    manifest: dict[str, Any]


def prepare(model: Model, options: WriteOptions) -> Prepared:
    """Check the options and plan the folder (raises before anything is written)."""
    chosen = settings(options)
    plan = raw_plan(model, options)
    orders = flatten_orders(model, chosen.layout)
    manifest = manifest_head(model, chosen, orders)
    fill_layers(manifest, model, plan, orders)
    return Prepared(chosen, plan, orders, manifest)


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Write the plain-array folder (weights.bin + manifest.json) to ``path``."""
    if getattr(options, "emit_forward", False):
        raise UsageError("{opt:emit_forward=True} writes a Java model", fix="Use {opt:to=java}")
    return write_folder(prepare(model, options), path, options)


def write_folder(prepared: Prepared, path: str, options: WriteOptions,
                 extra_files: Mapping[str, str] | None = None) -> list[str]:
    """Write weights.bin, manifest.json and ``extra_files`` (file name -> text, e.g. the java target's
    sources) into a new folder that replaces ``path`` only when complete; returns the warnings."""
    manifest = prepared.manifest
    path = os.path.normpath(path)
    with staged_directory(path, options.force) as folder:
        warnings = fill_weights(prepared, os.path.join(folder, WEIGHTS_FILE), options.quiet)
        files = {MANIFEST_FILE: manifest_text(manifest), **(extra_files or {})}
        for name, text in files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
    return warnings


def fill_weights(prepared: Prepared, path: str, quiet: bool = True) -> list[str]:
    """Write the weights file at ``path`` and complete the manifest (tensors, total size, warnings);
    returns the warnings."""
    chosen, manifest = prepared.chosen, prepared.manifest
    warnings = list(prepared.plan.warnings)
    manifest["tensors"], overflow = write_weights(prepared.plan, path, chosen, quiet)
    manifest["total_bytes"] = os.path.getsize(path)
    if overflow:
        warnings.append(f"values too large for {chosen.dtype_name} became infinite in: {', '.join(overflow)}")
    manifest["warnings"] = warnings
    return warnings


def write_weights(plan: Plan, path: str, chosen: RawSettings,
                  quiet: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Stream every planned tensor into ``path``, 8-byte aligned, block by block; returns the manifest
    entries and the names of tensors whose finite values overflowed the chosen dtype."""
    entries: list[dict[str, Any]] = []
    overflow: list[str] = []
    offset = 0
    total = sum(math.prod(item.shape) * chosen.dtype.itemsize for item in plan.tensors)
    check_free_space(path, total + ALIGNMENT * len(plan.tensors))
    with open(path, "wb") as handle, Progress(f"writing {os.path.basename(path)}", total, quiet) as progress:
        for item in plan.tensors:
            pad = -offset % ALIGNMENT
            handle.write(b"\0" * pad)
            offset += pad
            digest, tally = hashlib.sha256(), {"bytes": 0, "overflow": False}

            def write_slice(stored: np.ndarray) -> None:
                written = write_hashed(handle, stored, digest)
                tally["bytes"] += written
                progress.advance(item.key, written)

            write_in_background(stored_slices(item, chosen.dtype, lambda: tally.update(overflow=True)), write_slice)
            nbytes = int(tally["bytes"])
            if nbytes != math.prod(item.shape) * chosen.dtype.itemsize:
                raise BadInputError(f"tensor {item.key} came out as {nbytes} bytes, planned shape {item.shape}")
            if tally["overflow"]:
                overflow.append(item.key)
            entries.append({
                "name": item.key, "layer": item.layer.name, "kind": item.layer.kind, "param": item.param,
                "shape": [int(n) for n in item.shape], "dtype": chosen.dtype_name, "offset": offset,
                "nbytes": nbytes, "layout": item.layout.compact(), "pattern": item.layout.pattern,
                "semantics": item.layout.semantics, "sha256": digest.hexdigest(),
            })
            offset += nbytes
        handle.flush()
        os.fsync(handle.fileno())
    return entries, overflow


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as JSON: one line per top-level key, per layer and per tensor (readable and diffable)."""
    def dump(value: Any) -> str:
        return json.dumps(value, allow_nan=False, separators=(", ", ": "))
    lines = []
    for key, value in manifest.items():
        if key in ("layers", "tensors") and value:
            inner = ",\n".join(f"  {dump(item)}" for item in value)
            lines.append(f" {dump(key)}: [\n{inner}\n ]")
        else:
            lines.append(f" {dump(key)}: {dump(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def source_layout_letters(shape: tuple[int, ...], channels_last: bool) -> str:
    spatial = "".join(spatial_letters(len(shape) - 1)).upper()
    return spatial + "C" if channels_last else "C" + spatial


def io_description(model: Model) -> tuple[dict[str, Any] | None, str]:
    """The input as the source framework takes it (one sample) and the source's data format."""
    data_format = model.source.details.get("data_format") or "channels_first"
    first = model.layers[0] if model.layers else None
    if first is None or first.kind != "input" or first.output_shape is None \
            or any(n is None for n in first.output_shape):
        return None, data_format
    data_format = first.attrs.get("data_format") or data_format
    canonical = tuple(int(n) for n in first.output_shape)
    spatial = len(canonical) >= 2 and any(l.kind in KERNEL_KINDS + ("pool", "global_pool") for l in model.layers)
    if not spatial:
        return {"shape": list(canonical), "layout": None, "canonical_shape": list(canonical)}, data_format
    last = data_format == "channels_last"
    shape = list(canonical[1:]) + [canonical[0]] if last else list(canonical)
    return {"shape": shape, "layout": source_layout_letters(canonical, last),
            "canonical_shape": list(canonical)}, data_format


def layer_entry(layer: Layer, orders: dict[str, str], tensor_names: dict[tuple[str, str], str]) -> dict[str, Any]:
    attrs = {k: v for k, v in jsonable(layer.attrs).items() if k not in ("data_format", "flatten_order")}
    if layer.kind == "flatten":
        attrs["order"] = orders.get(layer.name, "chw")
        if "flatten_order" in layer.attrs:
            attrs["source_order"] = layer.attrs["flatten_order"]
    if layer.kind in KERNEL_KINDS and "groups" not in attrs:
        attrs["groups"] = 1
    return {
        "name": layer.name, "kind": layer.kind, "class": layer.source_class, "inputs": list(layer.inputs),
        "attrs": attrs,
        "output_shape": list(layer.output_shape) if layer.output_shape is not None else None,
        "tensors": {param: tensor_names.get((layer.name, param), state_key(layer.name, param)) for param in layer.tensors},
    }


def manifest_head(model: Model, chosen: RawSettings, orders: dict[str, str]) -> dict[str, Any]:
    source_input, data_format = io_description(model)
    return {
        "format": FORMAT_ID,
        "format_version": FORMAT_VERSION,
        "weightport_version": __version__,
        "file": WEIGHTS_FILE,
        "byte_order": chosen.byte_order,
        "dtype": chosen.dtype_name,
        "alignment": ALIGNMENT,
        "semantics": chosen.semantics,
        "layout": {"kernel": chosen.layout.kernel_text,
                   "dense": None if chosen.layout.dense is None else "".join(chosen.layout.dense),
                   "feature_maps": chosen.layout.feature_layout},
        "source": {**source_identity(model.source.path), "format": model.source.format,
                   "version": model.source.version, "backend": model.source.backend, "data_format": data_format},
        "input": source_input,
        "layers": [],
        "tensors": [],
    }


def source_identity(path: str) -> dict[str, str | None]:
    """The source as the output names it: its file name and SHA-256 (never a folder of the machine that
    converted it, so outputs are reproducible and leak no build paths)."""
    digest = None
    if path and os.path.isfile(path):
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
    return {"file": os.path.basename(os.path.normpath(path)) if path else path, "sha256": digest}


def fill_layers(manifest: dict[str, Any], model: Model, plan: Plan, orders: dict[str, str]) -> None:
    names = {(p.layer.name, p.param): p.key for p in plan.tensors}
    manifest["layers"] = [layer_entry(layer, orders, names) for layer in model.layers]


# ----------------------------------------------------------------------------------- atomic directory


def is_replaceable(path: str) -> bool:
    """An existing output --force may replace: a file, an empty folder, or a folder weightport wrote."""
    if not os.path.isdir(path) or os.path.islink(path):
        return True
    entries = os.listdir(path)
    if not entries:
        return True
    try:
        with open(os.path.join(path, MANIFEST_FILE), encoding="utf-8") as handle:
            return json.load(handle).get("format") == FORMAT_ID
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(path: str, force: bool) -> None:
    """Refuse to write ``path`` when it exists without ``force``, or is a folder weightport did not write."""
    check_can_write(path, force)
    if os.path.lexists(path) and not is_replaceable(path):
        raise OutputExistsError("output folder exists and was not written by weightport", path=path,
                                fix="Choose a new or empty folder; {opt:force=True} only replaces weightport's own output")


def move_into_place(complete: str, path: str, force: bool) -> None:
    """Put a complete folder written elsewhere (a validated staging copy) at ``path``, under the rules of a
    direct write: an existing ``path`` needs ``force`` and must be weightport's own; the old one is replaced."""
    check_replaceable(path, force)
    install(complete, path, force)
    fsync_folder(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def staged_directory(path: str, force: bool) -> Iterator[str]:
    """Yield a new folder beside ``path``; on success it replaces ``path``, else it is removed.

    An existing ``path`` needs ``force`` and must be a file, an empty folder or a
    folder weightport wrote (never an arbitrary folder).  The old output is moved
    aside, the new one renamed into place, then the old one deleted; a failure
    puts the old one back.
    """
    check_replaceable(path, force)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError("the output's parent folder does not exist", path=path, fix="Create it first")
    staging = staging_folder(path)
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        fsync_folder(staging)
        install(staging, path, force)
        fsync_folder(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def install(staging: str, path: str, force: bool) -> None:
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    check_can_write(path, force)
    trash = tempfile.mkdtemp(prefix=".weightport-old-", dir=os.path.dirname(os.path.abspath(path)))
    old = os.path.join(trash, "old")
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old, path)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)
