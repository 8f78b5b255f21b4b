"""Theano / Lasagne / PyTensor weights: pickles, ``np.savez`` files and ``theano.misc.pkl_utils`` zips.

Read through :mod:`weightport.formats.theano.allowlist` (nothing from the file runs, Theano need not be
installed).  A pickle holds no architecture, so meaning comes from a spec (``--spec FILE``, JSON)
or from Theano/Lasagne defaults:

* conv ``W`` (out, in/groups, rows, cols) = pattern ``o i h w``; Theano's ``conv2d`` and Lasagne's
  ``Conv2DLayer`` flip filters (``convolution``), ``Conv2DDNNLayer`` and cuda-convnet layers do not
  (``correlation``): without a spec or ``--source-semantics`` a file with 4-D kernels is refused.
* dense ``W`` (num_inputs, num_units) = ``i o``.
* Lasagne ``BatchNormLayer`` stores ``inv_std`` = 1/sqrt(var + eps): the canonical running_var is
  ``1 / inv_std**2 - eps`` (:class:`InvStdToVariance`).
* Lasagne ``LSTMLayer`` per-gate arrays ``W_in_to_ingate`` (in, u), ``W_hid_to_*`` (u, u), ``b_*``
  join in PyTorch gate order i, f, g (cell), o.

Spec (JSON): ``{"input_shape": [...], "layers": [{"name", "kind", "params": {file param: role},
"layout", "semantics", "strides", "pads", "groups", "dilations", "activation", "epsilon", "units",
"return_sequences"}], "arrays": [names in file order]}``; arrays are matched by the names they
carry (shared variables) or by position.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightport.core.magic import TORCH_LEGACY_HEAD, is_torch_legacy
from weightport.core.budget import (check_archive_members, check_compressed_bytes, check_stored_bytes, file_size,
                                    require_regular_file)
from weightport.core.errors import AmbiguousSemanticsError, BadInputError, UsageError
from weightport.core.layout import concat_blocks, conv_role, CONVOLUTION, CORRELATION, Layout, NO_SEMANTICS
from weightport.core.steps import Relayout
from weightport.core.layout import CANONICAL_PATTERNS
from weightport.core.model import Layer, Model, Provenance, SourceInfo, Tensor, array_tensor
from weightport.core.options import ReadOptions
from weightport.core.shapes import infer_shapes
from weightport.formats.theano.allowlist import ArrayStub, arrays_in, plain_dtype, safe_loads
from weightport.formats.theano.spec_path import default_spec_for

NAME = "theano_pickle"
DESCRIPTION = "Theano/Lasagne/PyTensor pickles, np.savez files and pkl_utils zips (allowlist unpickler)"
EXTENSIONS = (".pkl", ".pickle", ".p", ".npz", ".zip")
MAX_FILE = 16 * 1024 ** 3  # a pickle is read whole
# what reading a crafted file can raise beyond our own errors: each becomes one line naming the file
BROKEN = (ValueError, KeyError, IndexError, MemoryError, OverflowError, EOFError, RecursionError, OSError,
          NotImplementedError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)
LSTM_GATES = ("ingate", "forgetgate", "cell", "outgate")  # PyTorch order i, f, g, o


@dataclass(frozen=True)
class InvStdToVariance:
    """A value step: Lasagne's ``inv_std = 1/sqrt(var + eps)`` -> ``var``."""

    epsilon: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        inv = array.astype(np.float64)
        return (1.0 / (inv * inv) - self.epsilon).astype(array.dtype)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> "VarianceToInvStd":
        return VarianceToInvStd(self.epsilon)

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"running_var = 1/inv_std^2 - {self.epsilon:g}"


@dataclass(frozen=True)
class VarianceToInvStd:
    """The inverse of :class:`InvStdToVariance`."""

    epsilon: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        return (1.0 / np.sqrt(array.astype(np.float64) + self.epsilon)).astype(array.dtype)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def inverse(self) -> InvStdToVariance:
        return InvStdToVariance(self.epsilon)

    def is_identity(self) -> bool:
        return False

    def describe(self) -> str:
        return f"inv_std = 1/sqrt(running_var + {self.epsilon:g})"


def sniff(path: str) -> bool:
    require_regular_file(path)  # before opening: a FIFO blocks, /dev/zero never ends
    try:
        with open(path, "rb") as handle:
            head = handle.read(TORCH_LEGACY_HEAD)
    except OSError:
        return False
    if is_torch_legacy(head):
        return False  # a legacy torch.save file belongs to the torch reader
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if head[:1] in (b"(", b"]", b"}", b"c") and path.lower().endswith((".pkl", ".pickle", ".p")):
        return True  # protocol 0/1 pickles
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return False
        if any(n.endswith("data.pkl") for n in names) or "model.weights.h5" in names:
            return False  # torch.save / .keras archives belong to other readers
        return "pkl" in names or bool(names) and all(n.endswith(".npy") for n in names)
    return False


# -- reading the arrays -----------------------------------------------------------------------------
def read_arrays(path: str) -> list[tuple[str | None, np.ndarray]]:
    """(name or None, array) for every array in the file, in file order."""
    require_regular_file(path)
    size = file_size(path)
    if size > MAX_FILE:
        raise BadInputError(f"file is {size} bytes", path=path, fix="Split the weights")
    if zipfile.is_zipfile(path):
        arrays = zip_arrays(path)
    else:
        with open(path, "rb") as handle:
            data = handle.read()
        arrays = arrays_in(parameters_of(safe_loads(data, path)), path)
    # one array referenced a million times would be written a million times
    check_compressed_bytes(sum(array.nbytes for _, array in arrays), size, path, "the arrays (all together)")
    return arrays


def parameters_of(value: Any) -> Any:
    """A Lasagne recipe dict's ``'param values'`` (its ``'mean value'``, ``'synset words'`` are not weights)."""
    if isinstance(value, dict) and "param values" in value:
        return value["param values"]
    return value


def zip_arrays(path: str) -> list[tuple[str | None, np.ndarray]]:
    """np.savez files (arr_0, ...) and theano.misc.pkl_utils zips (a 'pkl' pickle + .npy members)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            check_archive_members(archive.infolist(), file_size(path), path)
            if "pkl" in names:
                members: dict[str, ArrayStub] = {}  # a member referred to again is the same array, not a copy

                def persistent(pid: Any) -> ArrayStub:
                    text = pid.decode("latin1") if isinstance(pid, bytes) else str(pid)
                    kind, _, member = text.partition(".")  # 'ndarray.<member>' (member names may hold dots)
                    if kind != "ndarray":
                        raise BadInputError(f"pkl_utils zip holds a {kind} (GPU) array {member!r}", path=path,
                                            fix="Re-save it from Theano with numpy arrays (get_value())")
                    if member not in names:
                        raise BadInputError(f"pkl_utils zip refers to a missing member {member!r}", path=path,
                                            fix="The archive is damaged")
                    if member not in members:
                        members[member] = ArrayStub(npy_member(archive, member, path))
                    return members[member]
                return arrays_in(safe_loads(archive.read("pkl"), path, persistent), path)
            ordered = sorted((n for n in names if n.endswith(".npy")), key=savez_order)
            return [(n[:-4], npy_member(archive, n, path)) for n in ordered]
    except zipfile.BadZipFile as error:
        raise BadInputError(f"zip archive is damaged ({error})", path=path, fix="Save the weights again") from None


def savez_order(name: str) -> tuple[int, str]:
    stem = name[:-4]
    return (int(stem[4:]), stem) if stem.startswith("arr_") and stem[4:].isdigit() else (1 << 30, stem)


def npy_member(archive: zipfile.ZipFile, member: str, path: str) -> np.ndarray:
    """An ``.npy`` member, read once its header declares a plain numeric array of the size the member holds."""
    info = archive.getinfo(member)
    try:
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise BadInputError(f"array {member} is .npy version {version}", path=path,
                                    fix="Save numeric arrays with np.save")
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = header(handle)
            plain_dtype(dtype, f"array {member}")
            if not all(n >= 0 for n in shape):
                raise BadInputError(f"array {member} declares shape {shape}", path=path, fix="The file is damaged")
            check_stored_bytes(math.prod(shape) * dtype.itemsize, info.file_size - handle.tell(), path,
                               f"array {member}")
            handle.seek(0)
            return np.lib.format.read_array(handle, allow_pickle=False)
    except ValueError as error:
        raise BadInputError(f"array {member} cannot be read ({error})", path=path,
                            fix="Object arrays are refused; save numeric arrays") from None


# -- meaning ----------------------------------------------------------------------------------------
def load_spec(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except OSError as error:
        raise UsageError(f"cannot read the spec ({error.strerror})", path=path, fix="Check the {opt:spec} path") from None
    except ValueError as error:
        raise UsageError(f"spec is not JSON ({error})", path=path, fix="Write the spec as JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
        raise UsageError("spec must be a JSON object with a 'layers' list", path=path,
                         fix="See docs/formats/theano.md for the spec format")
    return spec


def read(path: str, options: ReadOptions) -> Model:
    try:
        return read_model(path, options)
    except BROKEN as error:
        detail = str(error).splitlines()[0][:160] if str(error) else ""
        raise BadInputError(f"cannot be read ({type(error).__name__}{': ' if detail else ''}{detail})", path=path,
                            fix="The file is damaged or crafted") from None


def read_model(path: str, options: ReadOptions) -> Model:
    arrays = read_arrays(path)
    if not arrays:
        raise BadInputError("the file holds no numeric arrays", path=path,
                            fix="Give the file the weights were saved to")
    spec_path = options.spec or default_spec_for(path)
    spec = load_spec(spec_path)
    model = Model(SourceInfo(path, NAME, None, "theano", {"data_format": "channels_first", "spec": spec_path}))
    if spec is None:
        return without_spec(model, arrays, options)
    return with_spec(model, arrays, spec, options)


def named_lookup(arrays: list[tuple[str | None, np.ndarray]], spec: dict[str, Any], path: str) -> dict[str, np.ndarray]:
    """Spec array name -> array: by the names arrays carry, else by position."""
    names = spec.get("arrays") or []
    carried = {name: array for name, array in arrays if name}
    if names and all(n in carried for n in names):
        return {n: carried[n] for n in names}
    if names and len(names) == len(arrays):
        return {n: array for n, (_, array) in zip(names, arrays)}
    if carried and not names:
        return carried
    raise BadInputError(f"the file holds {len(arrays)} arrays, the spec names {len(names)}", path=path,
                        fix="List every array of the file, in order, under 'arrays' in the spec")


def source_tensor(name: str, key: str, array: np.ndarray, src: str, dst: str, semantics: str,
                  rule: str | None, extra: tuple = ()) -> Tensor:
    target = CORRELATION if semantics != NO_SEMANTICS else NO_SEMANTICS
    step = Relayout(Layout(src, semantics), Layout(dst, target))
    return Tensor(name, tuple(array.shape), array.dtype, Layout(dst, target), Provenance(key, src, semantics, rule),
                  lambda: array, (step,) + extra)


def kernel_semantics(entry: dict[str, Any], options: ReadOptions, path: str, layer: str) -> tuple[str, str]:
    if options.source_semantics:
        return options.source_semantics, "--source-semantics given by the user"
    if entry.get("semantics") in (CONVOLUTION, CORRELATION):
        return entry["semantics"], "spec file"
    raise AmbiguousSemanticsError(
        f"layer {layer!r} holds convolution kernels, and a pickle does not say whether they were used with "
        "Theano's conv2d / Lasagne Conv2DLayer (flipped, 'convolution') or Conv2DDNNLayer / cuda-convnet "
        "(not flipped, 'correlation')", path=path,
        fix="Pass {opt:source_semantics=convolution} or {opt:source_semantics=correlation}, give a {opt:spec}, or run 'weightport detect'")


def with_spec(model: Model, arrays: list[tuple[str | None, np.ndarray]], spec: dict[str, Any],
              options: ReadOptions) -> Model:
    path = model.source.path
    lookup = named_lookup(arrays, spec, path)
    model.has_architecture = True
    if spec.get("input_shape"):
        model.layers.append(Layer("input", "input", {}, {}, [], "Input", None, tuple(spec["input_shape"])))
    for entry in spec["layers"]:
        name, kind = entry["name"], entry["kind"]
        params = {role: (f"{name}.{param}", lookup.get(f"{name}.{param}")) for param, role in
                  (entry.get("params") or {}).items()}
        missing = [key for key, (k, a) in params.items() if a is None]
        if missing:
            raise BadInputError(f"layer {name!r}: the file has no array for {', '.join(missing)}", path=path,
                                fix="Check the spec's names against the file")
        layer = Layer(name, kind, {}, {}, [], source_class=entry.get("class", f"Theano {kind}"))
        if kind == "conv":
            conv_layer(layer, entry, params, options, path)
        elif kind == "dense":
            key, weight = params["weight"]
            layer.tensors["weight"] = source_tensor("weight", key, weight, entry.get("layout", "i o"), "o i",
                                                    NO_SEMANTICS, None)
            layer.attrs = {"units": int(weight.shape[1]), "activation": entry.get("activation", "linear")}
        elif kind == "batchnorm":
            batchnorm_layer(layer, entry, params)
        elif kind == "lstm":
            lstm_layer(layer, entry, params)
        elif kind in ("flatten", "activation", "pool", "dropout"):
            layer.attrs = {k: v for k, v in entry.items() if k not in ("name", "kind")}
        else:
            raise UsageError(f"spec layer kind {kind!r} is not supported", path=path,
                             fix="Use conv, dense, batchnorm, lstm, flatten, activation")
        if "bias" in params and kind in ("conv", "dense"):
            key, bias = params["bias"]
            layer.tensors["bias"] = source_tensor("bias", key, bias, "o", "o", NO_SEMANTICS, None)
        model.layers.append(layer)
    infer_shapes(model)
    return model


def conv_layer(layer: Layer, entry: dict[str, Any], params: dict[str, Any], options: ReadOptions, path: str) -> None:
    key, weight = params["weight"]
    rank = weight.ndim - 2
    semantics, rule = kernel_semantics(entry, options, path, layer.name)
    layout = entry.get("layout", " ".join(["o", "i"] + ["d", "h", "w"][3 - rank:]))
    layer.tensors["weight"] = source_tensor("weight", key, weight, layout, CANONICAL_PATTERNS[conv_role("conv", rank)],
                                            semantics, rule)
    layer.semantics_rule = rule
    canonical = layer.tensors["weight"].shape
    groups = int(entry.get("groups", 1))
    layer.attrs = {"rank": rank, "kernel_size": tuple(canonical[2:]), "strides": tuple(entry.get("strides", (1,) * rank)),
                   "dilations": tuple(entry.get("dilations", (1,) * rank)),
                   "padding": [list(p) for p in entry.get("pads", [[0, 0]] * rank)], "groups": groups,
                   "in_channels": canonical[1] * groups, "out_channels": canonical[0],
                   "activation": entry.get("activation", "linear"), "data_format": "channels_first"}


def batchnorm_layer(layer: Layer, entry: dict[str, Any], params: dict[str, Any]) -> None:
    epsilon = float(entry.get("epsilon", 1e-4))
    for role in ("weight", "bias", "running_mean"):
        key, array = params[role]
        layer.tensors[role] = source_tensor(role, key, array, "o", "o", NO_SEMANTICS, None)
    if "running_var" in params:
        key, array = params["running_var"]
        layer.tensors["running_var"] = source_tensor("running_var", key, array, "o", "o", NO_SEMANTICS, None)
    else:
        key, array = params["inv_std"]
        layer.tensors["running_var"] = source_tensor("running_var", key, array, "o", "o", NO_SEMANTICS,
                                                     "Lasagne BatchNormLayer stores inv_std",
                                                     (InvStdToVariance(epsilon),))
    layer.attrs = {"epsilon": epsilon, "momentum": float(entry.get("momentum", 0.9)),
                   "num_features": int(params["running_mean"][1].shape[0])}


def lstm_layer(layer: Layer, entry: dict[str, Any], params: dict[str, Any]) -> None:
    """Lasagne per-gate arrays joined into PyTorch's weight_ih/hh and bias in gate order i, f, g, o."""
    def joined(prefix: str) -> tuple[str, np.ndarray]:
        parts = [params[f"{prefix}{gate}"] for gate in LSTM_GATES]
        return "+".join(k for k, _ in parts), concat_blocks([a for _, a in parts], axis=-1)
    for param, prefix in (("weight_ih_l0", "W_in_to_"), ("weight_hh_l0", "W_hid_to_")):
        key, array = joined(prefix)
        layer.tensors[param] = source_tensor(param, key, array, "i o", "o i", NO_SEMANTICS, None)
    key, bias = joined("b_")
    layer.tensors["bias_ih_l0"] = source_tensor("bias_ih_l0", key, bias, "o", "o", NO_SEMANTICS, None)
    layer.tensors["bias_hh_l0"] = array_tensor("bias_hh_l0", np.zeros_like(bias), Layout("o"),
                                               Provenance("(none: Lasagne has one bias; zero)", "o"))
    layer.attrs = {"units": int(entry.get("units", bias.shape[0] // 4)),
                   "return_sequences": bool(entry.get("return_sequences", True)), "go_backwards": False,
                   "activation": "tanh", "recurrent_activation": "sigmoid", "reset_after": True}


def without_spec(model: Model, arrays: list[tuple[str | None, np.ndarray]], options: ReadOptions) -> Model:
    """Theano/Lasagne defaults: a weight (4-D conv ``o i h w``, 2-D dense ``i o``) and the 1-D bias after it."""
    path = model.source.path
    model.warn("no spec: layers are guessed from array shapes (conv W (out, in, rows, cols), dense W "
               "(num_inputs, num_units), a 1-D bias after its weight); give --spec for exact names and attributes")
    layer: Layer | None = None
    for index, (name, array) in enumerate(arrays):
        layer_name = (name.rsplit(".", 1)[0] if name and "." in name else None) or f"layer{index}"
        key = name or f"array[{index}]"
        if array.ndim in (3, 4, 5):
            semantics, rule = kernel_semantics({}, options, path, layer_name)
            rank = array.ndim - 2
            layer = Layer(layer_name, "conv", {"rank": rank, "kernel_size": tuple(array.shape[2:])},
                          source_class="Theano conv", semantics_rule=rule)
            layer.tensors["weight"] = source_tensor("weight", key, array, " ".join(["o", "i"] + ["d", "h", "w"][3 - rank:]),
                                                    CANONICAL_PATTERNS[conv_role("conv", rank)], semantics, rule)
            model.layers.append(layer)
        elif array.ndim == 2:
            layer = Layer(layer_name, "dense", {"units": int(array.shape[1])}, source_class="Theano dense")
            layer.tensors["weight"] = source_tensor("weight", key, array, "i o", "o i", NO_SEMANTICS, None)
            model.layers.append(layer)
        elif array.ndim == 1 and layer is not None and "bias" not in layer.tensors:
            layer.tensors["bias"] = source_tensor("bias", key, array, "o", "o", NO_SEMANTICS, None)
        else:
            extra = Layer(f"array{index}", "other", source_class="unassigned array")
            pattern = " ".join(f"a{k}" for k in range(array.ndim))
            extra.tensors["value"] = source_tensor("value", key, array, pattern, pattern, NO_SEMANTICS, None)
            model.layers.append(extra)
    return model


