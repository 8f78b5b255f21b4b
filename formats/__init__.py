"""The registry: every file format weightport reads or writes and every ``--to`` target, in two tables.

Each framework has one folder here (``keras``, ``onnx``, ``torch``, ``theano``, ``numpy``,
``plain``) holding its readers, writers, planner, layout tables and validation oracle.  This
module names them; the CLI's choices, default extensions, option gating, ``explain``,
``weightport formats`` and the docs' format table all derive from :data:`FORMATS` and
:data:`TARGETS`.  Adding a framework touches its own folder plus one line here.

A reader module exposes::

    NAME: str                 # registry name
    DESCRIPTION: str          # one line for `weightport formats` and errors
    EXTENSIONS: tuple[str]    # file extensions it owns, lower case
    sniff(path) -> bool       # cheap check that a file is of this format
    read(path, ReadOptions) -> weightport.core.model.Model

and a writer module ``write(Model, path, WriteOptions) -> list[str]`` (its warnings).  Modules
are imported only when used (by name, below), so reading an HDF5 file never imports torch or
tensorflow.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any, Callable

from weightport.core.errors import UsageError, option
from weightport.core.options import WriteOptions


@dataclass(frozen=True)
class FormatEntry:
    """A file format: the module that reads it and the one that writes it (either may be None)."""

    name: str
    description: str
    extensions: tuple[str, ...]
    target: str | None
    reader: str | None = None
    writer: str | None = None

    @property
    def reads(self) -> bool:
        return self.reader is not None

    @property
    def writes(self) -> bool:
        return self.writer is not None

    def reader_module(self) -> ModuleType:
        return importlib.import_module(self.reader or "")

    def writer_module(self) -> ModuleType:
        return importlib.import_module(self.writer or "")


@dataclass(frozen=True)
class TargetEntry:
    """A ``--to`` target: its default format, its planner, the options only it takes, how it is checked."""

    name: str
    description: str
    default_format: str
    planner: str                      # "module:function(model, WriteOptions) -> Plan"
    options: tuple[str, ...] = ()     # WriteOptions fields that only this target (and others listing them) takes
    renames: bool = False             # honours --rename (targets whose names are fixed by a runtime refuse it)
    check: str = ""                   # how `weightport validate` checks an output of this target
    validator: str = ""               # "module:function(source, Request, read) -> Report" under weightport.checks
                                      # (the check layer resolves it: weightport.checks.targets); "" = none
    needs_kinds: bool = False         # a state dict without --arch cannot be written (layer kinds unknown)

    def plan(self, model: Any, options: WriteOptions) -> Any:
        module, _, function = self.planner.partition(":")
        planner: Callable[..., Any] = getattr(importlib.import_module(module), function)
        return planner(model, options)


FORMATS: tuple[FormatEntry, ...] = (
    FormatEntry("keras_h5", "Keras HDF5 (`model.save('x.h5')`, `save_weights`) of Keras 1, Keras 2 (Theano, TensorFlow, "
                "CNTK backends), tf.keras and Keras 3; written as legacy weights for `load_weights`", (".h5", ".hdf5"), "keras",
                "weightport.formats.keras.h5_reader", "weightport.formats.keras.h5_writer"),
    FormatEntry("keras3", "Keras 3 `.keras` archives and `.weights.h5` (written as `.weights.h5`, for `model.load_weights`)", (".keras", ".weights.h5"), "keras",
                "weightport.formats.keras.keras3_reader", "weightport.formats.keras.keras3_writer"),
    FormatEntry("onnx", "ONNX (graph-aware, external data); written into a `--template` or as a whole graph "
                "traced with torch", (".onnx",), "onnx",
                "weightport.formats.onnx.reader", "weightport.formats.onnx.writer"),
    FormatEntry("safetensors", "safetensors (streamed, no torch import), one file or Hugging Face shards with "
                "their index", (".safetensors", ".safetensors.index.json"), "torch",
                "weightport.formats.torch.safetensors_reader",
                "weightport.formats.torch.safetensors_writer"),
    FormatEntry("npz", "NumPy `.npz` + JSON sidecar (scipy preset: `--target-semantics convolution`)", (".npz",), "npz",
                None, "weightport.formats.numpy.npz"),
    FormatEntry("theano_pickle", "Theano / Lasagne / PyTensor pickles, `np.savez`, `pkl_utils` zips (allowlist unpickler, "
                "no code runs)",
                (".pkl", ".pickle", ".p", ".npz", ".zip"), "theano", "weightport.formats.theano.reader", None),
    FormatEntry("theano", "Theano / Lasagne arrays for a Theano runtime: pickle + JSON spec, kernels flipped", (".pkl", ".pickle"), "theano",
                None, "weightport.formats.theano.writer"),
    FormatEntry("caffe", "Caffe `.caffemodel` + `.prototxt` (V1 and V2 layers; read without Caffe or protobuf)",
                (".caffemodel",), "torch", "weightport.formats.caffe.reader", None),
    FormatEntry("torch7", "Torch7 `.t7` nn models (binary `torch.save`, either byte order; read without Lua)",
                (".t7",), "torch", "weightport.formats.torch7.reader", None),
    FormatEntry("torch_pt", "PyTorch `.pt` state_dict (read with `weights_only=True`)", (".pt", ".pth"), "torch",
                "weightport.formats.torch.pt_reader", "weightport.formats.torch.pt_writer"),
    FormatEntry("raw", "plain arrays for Java, C, Go, JavaScript (`weights.bin` + `manifest.json`)", ("",), "raw",
                None, "weightport.formats.plain.raw"),
    FormatEntry("java", "plain arrays with a Java loader, check program and forward pass", ("",), "java",
                None, "weightport.formats.plain.java"),
)

PLAIN_ARRAY_OPTIONS = ("dtype", "byte_order", "layout")

TARGETS: tuple[TargetEntry, ...] = (
    TargetEntry("torch", "PyTorch state_dict", "safetensors", "weightport.formats.torch.plan:torch_plan",
                ("strict_against", "max_shard_size"), renames=True, check="layer by layer against the source framework, and the "
                "whole model in torch with --input/--expected", validator="validate:validate_torch_file"),
    TargetEntry("keras", "Keras/TensorFlow weights", "keras_h5", "weightport.formats.keras.layers:keras_plan",
                check="in Keras 3: the file as load_weights reads it, each layer as its Keras layer, the whole "
                "model rebuilt from the source's architecture", validator="targets.keras:validate_keras", needs_kinds=True),
    TargetEntry("onnx", "ONNX graph or template", "onnx", "weightport.formats.onnx.writer:onnx_plan", ("template",),
                check="in onnxruntime: each layer's node cut out and run, and the whole graph",
                validator="targets.onnx:validate_onnx", needs_kinds=True),
    TargetEntry("npz", "NumPy/scipy arrays", "npz", "weightport.formats.numpy.npz:npz_plan", renames=True,
                check="in scipy: the arrays as the sidecar declares them, each layer with scipy's correlate or "
                "convolve", validator="targets.npz:validate_npz"),
    TargetEntry("theano", "Theano/Lasagne arrays", "theano", "weightport.formats.theano.writer:theano_plan",
                check="in scipy: the pickle as the spec declares it, each layer with Lasagne's formulas (true "
                "convolution)", validator="targets.theano:validate_theano", needs_kinds=True),
    TargetEntry("raw", "plain arrays for any runtime", "raw", "weightport.formats.plain.raw:raw_plan",
                PLAIN_ARRAY_OPTIONS, renames=True, check="weights.bin read by manifest.json alone, each layer in "
                "scipy as declared", validator="targets.plain:validate_plain"),
    TargetEntry("java", "plain arrays with Java sources", "java", "weightport.formats.plain.raw:raw_plan",
                PLAIN_ARRAY_OPTIONS + ("emit_forward", "java_package", "java_class"), renames=True,
                check="as raw, and with a JDK the project's own Java compiled and run (the NAMECheck class, "
                "and the model class NAME with --emit-forward)", validator="targets.plain:validate_plain"),
)

# Extensions read but never written, and why: never suggested for an output, refused with the reason.
UNWRITTEN: dict[str, tuple[str, str]] = {
    ".keras": ("weightport writes no .keras archive: its config.json is the model's architecture as Keras "
               "serializes it, which a weights conversion does not produce",
               "Name the output NAME.weights.h5 (Keras 3's own weights format) and load it with "
               "model.load_weights into the Keras model built from your code"),
}

OPTION_FLAGS = {"strict_against": "--strict-against", "max_shard_size": "--max-shard-size", "template": "--template",
                "dtype": "--dtype",
                "byte_order": "--byte-order", "layout": "--layout", "emit_forward": "--emit-forward",
                "java_package": "--java-package", "java_class": "--java-class",
                "rename": "--rename", "rename_patterns": "--rename"}


def target_names() -> tuple[str, ...]:
    """Every ``--to`` value, in registry order."""
    return tuple(item.name for item in TARGETS)


def target(name: str) -> TargetEntry:
    for item in TARGETS:
        if item.name == name:
            return item
    raise UsageError(f"unknown or unsupported target {name!r}", fix=f"Use {{opt:to}} with one of: {', '.join(target_names())}")


def entry(name: str) -> FormatEntry:
    for item in FORMATS:
        if item.name == name:
            return item
    raise KeyError(name)


def make_plan(model: Any, target_name: str, options: WriteOptions) -> Any:
    """The plan of target ``target_name`` for ``model`` (what its writer writes; what explain prints)."""
    require_architecture(model, target_name, options)
    return target(target_name).plan(model, options)


def require_architecture(model: Any, target_name: str, options: WriteOptions) -> None:
    """A state dict without ``--arch`` refused for a target that needs layer kinds (weightport.formats.torch.arch)."""
    from weightport.formats.torch.requirements import require_architecture as require
    require(model, target_name, target(target_name).needs_kinds, options.template)


def check_target_options(target_name: str, options: WriteOptions) -> None:
    """Refuse a target-specific option given for a target that does not take it (never ignore it)."""
    chosen = target(target_name)
    defaults = WriteOptions()
    given = [item.name for item in fields(WriteOptions)
             if getattr(options, item.name) != getattr(defaults, item.name)]
    specific = {name for item in TARGETS for name in item.options}
    refused = [name for name in given if name in specific and name not in chosen.options]
    if not chosen.renames:
        refused += [name for name in given if name in ("rename", "rename_patterns")]
    flags = sorted({OPTION_FLAGS[name] for name in refused})
    if flags:
        takers = sorted({item.name for item in TARGETS for name in refused
                         if name in item.options or (name.startswith("rename") and item.renames)})
        verb = "applies" if len(flags) == 1 else "apply"
        named = ", ".join(option(flag[2:].replace("-", "_")) for flag in flags)  # shown as flags or keywords
        raise UsageError(f"{named} only {verb} to the {', '.join(takers)} target"
                         f"{'s' if len(takers) > 1 else ''}, not {target_name}",
                         fix=f"Drop {named}, or convert with {option('to', takers[0])}")


def extension_of(path: str) -> str:
    """Lower-case extension, keeping Keras 3's double extension ``.weights.h5``."""
    for double in (".weights.h5", ".safetensors.index.json"):
        if path.lower().endswith(double):
            return double
    return os.path.splitext(path)[1].lower()


def reader_for(path: str) -> FormatEntry:
    """The format of an existing file: by content first (sniff), then by extension."""
    readers = [item for item in FORMATS if item.reads]
    by_extension = [item for item in readers if extension_of(path) in item.extensions]
    for item in by_extension + [item for item in readers if item not in by_extension]:
        if item.reader_module().sniff(path):
            return item
    if by_extension:  # the name claims a format: let its reader say precisely what is wrong
        return by_extension[0]
    known = ", ".join(sorted({ext for item in readers for ext in item.extensions}))
    raise UsageError("format not recognized (no reader accepts its content)", path=path,
                     fix=f"weightport reads {known}; check the file is complete")


def writer_for(path: str, to: str | None) -> FormatEntry:
    """The writer for an output path and an optional ``--to`` target."""
    ext = extension_of(path)
    if ext in UNWRITTEN:
        problem, fix = UNWRITTEN[ext]
        raise UsageError(problem, path=path, fix=fix)
    writers = [item for item in FORMATS if item.writes]
    if to is not None:
        family = [item for item in writers if item.target == to or item.name == to]
        if not family:
            raise UsageError(f"unknown or unsupported target {to!r}",
                             fix=f"Use {{opt:to}} with one of: {', '.join(target_names())}")
        for item in family:
            if ext in item.extensions or "" in item.extensions:  # "": writes a folder, any name
                return item
        if not ext:
            return entry(target(to).default_format)
        names = ", ".join(e for item in family for e in item.extensions if e not in UNWRITTEN)
        raise UsageError(f"output {path!r} does not have an extension of target {to!r}",
                         fix=f"Name the output with one of: {names}")
    for item in writers:
        if ext and ext in item.extensions:  # a folder writer ("") is chosen only with --to
            return item
    raise UsageError(f"cannot tell the target format from the output name {path!r}",
                     fix="Give {opt:to=torch} (or name the output .safetensors / .pt)")


def format_table() -> str:
    """The Markdown table of formats and targets (README and docs/formats carry it; a test keeps them equal)."""
    rows = ["| format | extensions | read | write |", "|---|---|---|---|"]
    for item in FORMATS:
        extensions = ", ".join(f"`{e}`" for e in item.extensions if e) or "a folder"
        rows.append(f"| {item.description} | {extensions} | {'yes' if item.reads else '-'} | "
                    f"{f'`--to {item.target}`' if item.writes else '-'} |")
    return "\n".join(rows)
