"""The Keras target checked in Keras 3 (``--to keras``: legacy ``.h5`` weights and Keras 3 ``.weights.h5``).

The converted file is never read with weightport's readers or layout code: its arrays reach Keras the way
Keras itself loads them, so a mistake shared by weightport's writer and reader cannot cancel out.

* **Structure** (names check): the file is opened with h5py as Keras lays it out.  A legacy ``.h5`` is a
  ``layer_names`` list of groups, each listing its datasets in ``weight_names``, matched to the model's
  weighted layers *by order* as ``Model.load_weights`` does, and assigned in Keras's legacy variable order
  (``trainable_weights + non_trainable_weights``, keras/src/legacy/saving/legacy_h5_format.py).  A Keras 3
  ``.weights.h5`` holds ``layers/<key>/vars/0..n``, the key being the layer's class in snake case
  numbered per parent (``conv2d``, ``conv2d_1``, ...), an RNN's variables under ``cell/``, a
  ``Bidirectional``'s under ``forward_layer/`` and ``backward_layer/``, a ``TimeDistributed``'s under
  ``layer/``; each owner takes them through Keras's own ``Layer.load_own_variables``.  Each weighted source
  layer gets the Keras layer it is in a Keras 3 model (Conv1D/2D/3D, Conv*DTranspose, DepthwiseConv*D,
  SeparableConv*D, Dense, BatchNormalization, Embedding, PReLU, LSTM, GRU, Bidirectional, TimeDistributed)
  built from the *source's* attributes; a missing group, a wrong count or shape fails naming the layer.
* **Layer by layer**: :class:`KerasSide` is the target side of
  :func:`weightport.checks.layer_check.check_layers`: the Keras layer holding the file's arrays, run on the
  canonical (channels-first, batch-first) input moved channels-last with ``np.moveaxis``, and back.  A Dense
  after a Flatten is fed the map through ``keras.layers.Flatten`` in the target model's layout.
* **Whole model**, when Keras 3 can rebuild the source's architecture (a Keras source with its model
  config): the rebuilt model, every variable zeroed, loads the converted file with ``Model.load_weights``
  and runs the recorded ``--input``; without a recorded pair, a correlating (TensorFlow-backend or Keras 3)
  source run by Keras 3 with its own weights on seeded random input is the reference.

These are the runtime's half of the check; the validator that turns them into checks and a report is the
check layer's (:mod:`weightport.checks.targets.keras`), which sits above the frameworks (docs/architecture.md):
nothing here imports it, by statement or by name.  A piece that cannot check raises ``NotImplementedError``
with the reason; one that finds the converted file unusable raises :class:`weightport.core.oracle.Refused`.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightport.core.model import Layer, Model, is_bidirectional
from weightport.core.oracle import Refused
from weightport.core.shapes import feeding_flatten, flattened_map_shape
from weightport.formats.keras.layers import snake_case

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

KERNEL_KINDS = ("conv", "conv_transpose", "depthwise", "separable")
RNN_KINDS = ("lstm", "gru")
GATES = {"lstm": "ifco", "gru": "zrh"}  # Keras's gate blocks, in the order its kernels hold them


class Unloadable(Exception):
    """The file's arrays for a layer do not load into its Keras layer (missing, too many or few, shapes)."""


def said(error: BaseException, last: bool = False) -> str:
    """An exception as one short line: its type and the first (or last) line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {(lines[-1] if last else lines[0])[:200] if lines else ''}"


def refused(runtime: str, error: BaseException) -> NotImplementedError:
    """A runtime's refusal to run a layer, as the reason its layer check is skipped (never a crash)."""
    return NotImplementedError(f"{runtime} could not run it ({said(error)})")


# ------------------------------------------------------------------------------ the Keras layer of a layer


def kernel_size(layer: Layer, tensor: str = "weight") -> tuple[int, ...]:
    return tuple(layer.attrs.get("kernel_size") or layer.tensors[tensor].shape[2:])


def depth_multiplier(layer: Layer) -> int:
    """Channels out per channel in of a depthwise kernel (canonical ``(i m) 1 k...``)."""
    if layer.attrs.get("depth_multiplier"):
        return int(layer.attrs["depth_multiplier"])
    weight = layer.tensors.get("depthwise.weight", layer.tensors.get("weight"))
    channels = layer.attrs.get("in_channels") or layer.attrs.get("groups") or weight.shape[0]
    return max(int(weight.shape[0]) // int(channels), 1)


def keras_class(layer: Layer) -> str:
    """The Keras 3 class holding ``layer`` in a Keras model (wrappers included)."""
    if layer.attrs.get("time_distributed"):
        return "TimeDistributed"
    if layer.kind in RNN_KINDS and is_bidirectional(layer):
        return "Bidirectional"
    if layer.kind == "custom":  # kept with --keep-unknown: its own class, without a registered package
        return (layer.source_class or "custom").rpartition(">")[2]
    rank = layer.attrs.get("rank", 2)
    return {"conv": f"Conv{rank}D", "conv_transpose": f"Conv{rank}DTranspose", "depthwise": f"DepthwiseConv{rank}D",
            "separable": f"SeparableConv{rank}D", "dense": "Dense", "batchnorm": "BatchNormalization",
            "embedding": "Embedding", "prelu": "PReLU", "lstm": "LSTM", "gru": "GRU",
            "layernorm": "LayerNormalization"}.get(layer.kind, layer.kind)


def source_activation(layer: Layer, source: Model, which: str, default: str) -> Any:
    """An RNN activation as the *source* defines it (Keras 1/2's hard_sigmoid is ``clip(0.2 x + 0.5)``):
    the layer check compares weights, so both sides compute the source's function."""
    from weightport.formats.keras.oracle import keras_activation
    name = layer.attrs.get(which) or default
    return keras_activation(name, source.source.version if source.source.format.startswith("keras") else None)


def build_keras_layer(layer: Layer, source: Model, input_shape: tuple[int, ...] | None = None) -> Any:
    """A built Keras 3 layer of ``layer``'s kind and attributes (valid padding, no output padding, no
    activation of its own, strides and dilations of the source); ``input_shape`` is the canonical input's
    shape (batch first), else the source's shapes are used."""
    import keras
    L, a, t = keras.layers, layer.attrs, layer.tensors
    first = next(iter(t.values()))
    dtype = str(np.dtype(first.dtype)) if np.dtype(first.dtype).kind == "f" else "float32"
    kind, rank = layer.kind, a.get("rank", 2)
    bias = any(name.endswith("bias") or name.startswith("bias_ih") for name in t)
    if a.get("time_distributed"):
        if kind != "dense":
            raise NotImplementedError(f"TimeDistributed({kind}) is not rebuilt here")
        wrapped = L.TimeDistributed(L.Dense(int(t["weight"].shape[0]), use_bias=bias, dtype=dtype))
        wrapped.build((None, None, int(t["weight"].shape[1])))
        return wrapped
    if kind in KERNEL_KINDS:
        strides, dilations = tuple(a["strides"]), tuple(a["dilations"])
        if any(s > 1 for s in strides) and any(d > 1 for d in dilations):
            strides = (1,) * rank  # Keras refuses both; run stride 1 and keep every stride-th output
        common = dict(strides=strides, dilation_rate=dilations, padding="valid", use_bias=bias, dtype=dtype)
        if kind == "conv":
            groups = int(a.get("groups", 1))
            channels = int(t["weight"].shape[1]) * groups
            keras_layer = getattr(L, f"Conv{rank}D")(int(t["weight"].shape[0]), kernel_size(layer), groups=groups,
                                                    **common)
        elif kind == "conv_transpose":
            if int(a.get("groups", 1)) != 1:
                raise NotImplementedError("Keras's ConvTranspose layers take no groups")
            if strides != tuple(a["strides"]):
                raise NotImplementedError("Keras's ConvTranspose refuses strides > 1 with dilations > 1")
            channels = int(t["weight"].shape[0])
            keras_layer = getattr(L, f"Conv{rank}DTranspose")(int(t["weight"].shape[1]), kernel_size(layer),
                                                             **common)
        else:
            multiplier = depth_multiplier(layer)
            if rank == 3:
                raise NotImplementedError(f"Keras 3 has no {'Depthwise' if kind == 'depthwise' else 'Separable'}Conv3D")
            weight = "weight" if kind == "depthwise" else "depthwise.weight"
            channels = int(t[weight].shape[0]) // multiplier
            if kind == "depthwise":
                keras_layer = getattr(L, f"DepthwiseConv{rank}D")(kernel_size(layer, weight),
                                                                  depth_multiplier=multiplier, **common)
            else:
                keras_layer = getattr(L, f"SeparableConv{rank}D")(int(t["pointwise.weight"].shape[0]),
                                                                  kernel_size(layer, weight),
                                                                  depth_multiplier=multiplier, **common)
        keras_layer.build((None,) * (rank + 1) + (channels,))
        return keras_layer
    if kind == "dense":
        keras_layer = L.Dense(int(t["weight"].shape[0]), use_bias=bias, dtype=dtype)
        keras_layer.build((None, int(t["weight"].shape[1])))
        return keras_layer
    if kind == "batchnorm":
        channels = int(t.get("weight", t.get("running_mean")).shape[0])
        rank = len(input_shape) if input_shape else (len(layer.output_shape) + 1 if layer.output_shape else 2)
        keras_layer = L.BatchNormalization(axis=-1, epsilon=float(a.get("epsilon", 1e-3)), center="bias" in t,
                                           scale="weight" in t, dtype=dtype)
        keras_layer.build((None,) * (rank - 1) + (channels,))
        return keras_layer
    if kind == "layernorm":  # over the features of (batch, steps, features), as the layer check runs it
        keras_layer = L.LayerNormalization(axis=-1, epsilon=float(a.get("epsilon", 1e-3)), center=bool(a.get("center", True)),
                                           scale=bool(a.get("scale", True)), dtype=dtype)
        keras_layer.build((None, None, int(t["weight"].shape[0])))
        return keras_layer
    if kind == "embedding":
        rows, width = (int(n) for n in t["weight"].shape)
        keras_layer = L.Embedding(rows, width, dtype=dtype)
        keras_layer.build((None, None))
        return keras_layer
    if kind == "prelu":
        shape = tuple(input_shape[1:]) if input_shape else layer.output_shape
        if not shape or any(n is None for n in shape):
            raise NotImplementedError("the PReLU's input shape is not known")
        alpha = tuple(t["weight"].shape) + (1,) * (len(shape) - len(t["weight"].shape))
        channels_last = tuple(shape[1:]) + tuple(shape[:1])
        shared = [k + 1 for k, n in enumerate(alpha[1:] + alpha[:1]) if n == 1 and channels_last[k] != 1]
        keras_layer = L.PReLU(shared_axes=shared or None, dtype=dtype)
        keras_layer.build((None,) + channels_last)
        return keras_layer
    if kind in RNN_KINDS:
        units = int(a.get("units") or t["weight_hh_l0"].shape[1])
        options = dict(return_sequences=True, use_bias=bias, dtype=dtype, go_backwards=bool(a.get("go_backwards")),
                       activation=source_activation(layer, source, "activation", "tanh"),
                       recurrent_activation=source_activation(layer, source, "recurrent_activation", "sigmoid"))
        if kind == "gru":
            options["reset_after"] = bool(a.get("reset_after", True))
        cell = (L.LSTM if kind == "lstm" else L.GRU)(units, **options)
        keras_layer = L.Bidirectional(cell, merge_mode="concat") if is_bidirectional(layer) else cell
        keras_layer.build((None, None, int(t["weight_ih_l0"].shape[1])))
        return keras_layer
    raise NotImplementedError(f"no Keras layer is built here for {kind} layers")


def variables(keras_layer: Any) -> list[Any]:
    """A Keras layer's variables in the legacy HDF5 order (trainable, then non-trainable)."""
    return list(keras_layer.trainable_weights) + list(keras_layer.non_trainable_weights)


def owners(keras_layer: Any) -> list[tuple[str, Any]]:
    """Where a Keras 3 ``.weights.h5`` keeps a layer's variables: (path below its key, the owning object)."""
    import keras
    if isinstance(keras_layer, keras.layers.Bidirectional):
        return [(f"{side}/{path}".rstrip("/"), owner) for side in ("forward_layer", "backward_layer")
                for path, owner in owners(getattr(keras_layer, side))]
    if isinstance(keras_layer, keras.layers.TimeDistributed):
        return [(f"layer/{path}".rstrip("/"), owner) for path, owner in owners(keras_layer.layer)]
    if isinstance(keras_layer, keras.layers.RNN):
        return [("cell", keras_layer.cell)]
    return [("", keras_layer)]


def assign(targets: list[Any], arrays: list[np.ndarray], where: str) -> None:
    """Assign arrays to Keras variables one by one, refusing a wrong count or shape (as Keras's loaders do)."""
    if len(arrays) != len(targets):
        raise Unloadable(f"{where} holds {len(arrays)} arrays, the Keras layer {len(targets)} variables")
    for variable, array in zip(targets, arrays):
        if tuple(variable.shape) != tuple(array.shape):
            raise Unloadable(f"{where}: {variable.name} is {tuple(variable.shape)} in Keras, {tuple(array.shape)} "
                             "in the file")
        variable.assign(array)


# ------------------------------------------------------------------------------------ the file, as Keras reads it


def text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def dataset_array(dataset: Any) -> np.ndarray:
    """A dataset's values; Keras 3 marks bfloat16 datasets with a ``dtype`` attribute."""
    array = np.asarray(dataset[()])
    if text(dataset.attrs.get("dtype", "")) == "bfloat16":
        import ml_dtypes
        array = array.view(ml_dtypes.bfloat16).astype(np.float32)
    return array




class KerasFile:
    """A converted Keras weights file opened with h5py, read as Keras's loaders read it."""

    def __init__(self, path: str) -> None:
        import h5py
        self.path = path
        self.handle = h5py.File(path, "r")
        root = self.handle["model_weights"] if "model_weights" in self.handle else self.handle
        if "layer_names" in root.attrs:
            self.kind, self.root = "legacy", root
            names = [text(n) for n in root.attrs["layer_names"]]
            self.weighted = [n for n in names if n in root and len(root[n].attrs.get("weight_names", [])) > 0]
        elif "layers" in self.handle:
            self.kind, self.root, self.weighted = "keras3", self.handle, []
        else:
            self.handle.close()
            raise Unloadable("neither a legacy Keras HDF5 file (a layer_names attribute) nor a Keras 3 "
                             ".weights.h5 (a layers group)")
        self.backend = text(root.attrs.get("backend", "")) if self.kind == "legacy" else ""
        self.claimed: set[str] = set()

    def close(self) -> None:
        self.handle.close()

    def legacy_arrays(self, group_name: str) -> list[np.ndarray]:
        group = self.root[group_name]
        return [dataset_array(group[text(n)]) for n in group.attrs.get("weight_names", [])]

    def load_keras3(self, key: str, keras_layer: Any) -> None:
        for below, owner in owners(keras_layer):
            path = "/".join(part for part in (key, below, "vars") if part)
            if path not in self.handle:
                raise Unloadable(f"the file has no group {path} (Keras 3 keeps this layer's variables there)")
            group = self.handle[path]
            store = {name: dataset_array(group[name]) for name in group}
            self.claimed.add(path)
            try:
                owner.load_own_variables(store)  # Keras's own loader: its count and shape checks
            except (ValueError, KeyError) as error:
                raise Unloadable(f"{path}: {said(error)}") from None

    def claim_kept(self, key: str, shapes: list[tuple[int, ...]]) -> None:
        """A custom layer kept with --keep-unknown: its group ``<key>/vars`` holds one array per tensor, in
        order and of the stored shapes (no Keras layer here computes it, so its values go unchecked)."""
        path = f"{key}/vars"
        if path not in self.handle:
            raise Unloadable(f"the file has no group {path} (Keras 3 keeps this layer's variables there)")
        group = self.handle[path]
        found = [tuple(group[name].shape) for name in sorted(group, key=int)]
        self.claimed.add(path)
        if found != shapes:
            raise Unloadable(f"{path} holds arrays of shapes {found}, the layer's tensors are {shapes}")

    def unclaimed(self) -> list[str]:
        """Keras 3 variable groups holding arrays that no layer of the model takes."""
        import h5py
        found: list[str] = []
        self.handle.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Group)
                               and name.endswith("vars") and name != "vars" and len(item) > 0 else None)
        return [name for name in found if name not in self.claimed]


def keras3_keys(source: Model) -> dict[str, str]:
    """Each weighted layer's group path under ``layers/`` as Keras 3's saving numbers it: the class in
    snake case, ``_1``, ``_2`` ... per repeat within one model; a nested model is a layer of its parent
    (``functional``, ``sequential``), numbered when first met.  Weightless classes never share a name with
    weighted ones, so counting the weighted layers and the containers is enough."""
    counts: dict[str, dict[str, int]] = {}
    containers: dict[tuple[str, ...], str] = {}

    def numbered(parent: str, base: str) -> str:
        seen = counts.setdefault(parent, {})
        seen[base] = seen.get(base, -1) + 1
        return f"{base}_{seen[base]}" if seen[base] else base

    keys = {}
    for layer in source.layers:
        parent, identity = "layers/", ()
        for class_key, name in layer.attrs.get("keras_containers", []):
            identity += (name,)
            if identity not in containers:
                containers[identity] = parent + numbered(parent, class_key) + "/layers/"
            parent = containers[identity]
        if layer.tensors:
            keys[layer.name] = parent + numbered(parent, snake_case(keras_class(layer)))
    return keys


# ------------------------------------------------------------------------------------------ the target side


def flatten_feeding(source: Model, layer: Layer) -> tuple[tuple[int, ...], str] | None:
    """(channels-first map shape, the target model's flatten order) of the Flatten feeding a Dense, or None.

    The Keras target model is the source's own architecture for a Keras source (its Flatten flattens as
    the source's did: ``hwc``, or ``chw`` for a Flatten that leaves a channels-first map as it is), and a
    channels-last Keras model (``hwc``) for any other source."""
    shape = flattened_map_shape(source, layer)
    if not shape:
        return None
    flatten = feeding_flatten(source, layer)
    order = "hwc"
    if source.source.format.startswith("keras") and flatten is not None:
        order = flatten.attrs.get("flatten_order") or "hwc"
    return tuple(shape), order


def keras_input(layer: Layer, source: Model, x: np.ndarray) -> np.ndarray:
    """The canonical input ``x`` as the target Keras layer takes it (channels moved last)."""
    if layer.kind == "dense" and not layer.attrs.get("time_distributed"):
        feeding = flatten_feeding(source, layer)
        if feeding is None:
            return x
        import keras
        shape, order = feeding
        feature_map = x.reshape((x.shape[0],) + shape)
        if order == "hwc":
            feature_map = np.moveaxis(feature_map, 1, -1)
        return keras.ops.convert_to_numpy(keras.layers.Flatten()(feature_map))
    if layer.kind in KERNEL_KINDS + ("batchnorm", "prelu") and x.ndim > 2:
        return np.moveaxis(x, 1, -1)
    return x


def run_keras_layer(layer: Layer, keras_layer: Any, x: np.ndarray, source: Model) -> np.ndarray:
    """Run the built Keras layer on canonical ``x``; the output back in the canonical layout."""
    import keras
    y = keras.ops.convert_to_numpy(keras_layer(keras_input(layer, source, x), training=False))
    if layer.kind in KERNEL_KINDS + ("batchnorm", "prelu") and y.ndim > 2:
        y = np.moveaxis(y, -1, 1)
        wanted = tuple(layer.attrs.get("strides") or ())
        used = tuple(getattr(keras_layer, "strides", wanted) or wanted)
        if layer.kind in KERNEL_KINDS and wanted != used:  # ran at stride 1 (Keras refuses strides with dilations)
            y = y[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in wanted)]
    return y


class RuntimeSide:
    """A target runtime running one layer at a time (a ``TargetSide``): ``held(layer)`` is what the
    converted file holds for it (None when nothing), ``run`` runs it, ``mistakes`` alters what it holds
    (one classic mistake undone each) and ``holding`` is the same side holding that instead.  A layer the
    runtime refuses is skipped with the refusal as its reason, never a crash."""

    runtime = "the target runtime"
    nothing_held = "the converted file holds none of its weights"

    def __init__(self, unavailable: dict[str, str]) -> None:
        self.unavailable = unavailable

    def held(self, layer: Layer) -> Any:
        raise NotImplementedError

    def run(self, layer: Layer, held: Any, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mistakes(self, layer: Layer, held: Any) -> list[tuple[str, Any]]:
        return []

    def holding(self, layer: Layer, held: Any) -> RuntimeSide:
        raise NotImplementedError

    def output(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        if layer.name in self.unavailable:
            raise NotImplementedError(self.unavailable[layer.name])
        held = self.held(layer)
        if held is None:
            raise NotImplementedError(self.nothing_held)
        try:
            return self.run(layer, held, x)
        except NotImplementedError:
            raise
        except Exception as error:
            raise refused(self.runtime, error) from None

    def variants(self, layer: Layer) -> list[tuple[str, RuntimeSide]]:
        held = self.held(layer)
        if held is None or layer.name in self.unavailable:
            return []
        return [(mistake, self.holding(layer, changed)) for mistake, changed in self.mistakes(layer, held)]


class KerasSide(RuntimeSide):
    """Keras 3 holding the converted file's arrays, one layer at a time.

    ``arrays`` holds each layer's arrays as Keras's loader put them into its Keras layer (legacy variable
    order); ``unavailable`` says why a layer cannot run (it does not load, or Keras has no such layer).
    """

    runtime = "Keras"

    def __init__(self, source: Model, arrays: dict[str, list[np.ndarray]], unavailable: dict[str, str],
                 convolving: bool = False) -> None:
        super().__init__(unavailable)
        self.source, self.arrays, self.convolving = source, arrays, convolving

    def held(self, layer: Layer) -> list[np.ndarray] | None:
        return self.arrays.get(layer.name)

    def run(self, layer: Layer, held: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        if self.convolving and layer.kind in KERNEL_KINDS:
            raise NotImplementedError("the file is written for Keras on Theano (its backend attribute), whose "
                                      "kernels convolve; Keras 3 correlates")
        keras_layer = build_keras_layer(layer, self.source, x.shape)
        assign(variables(keras_layer), held, layer.name)
        if layer.attrs.get("time_distributed"):
            keras_layer = keras_layer.layer  # the wrapped layer at one step: the check runs it as that layer
        return run_keras_layer(layer, keras_layer, x, self.source)

    def mistakes(self, layer: Layer, held: list[np.ndarray]) -> list[tuple[str, list[np.ndarray]]]:
        return keras_mistakes(layer, self.source, held)

    def holding(self, layer: Layer, held: list[np.ndarray]) -> KerasSide:
        return KerasSide(self.source, {**self.arrays, layer.name: held}, self.unavailable, self.convolving)

    def tensors(self, layer: Layer) -> dict[str, np.ndarray]:
        """The layer's kernel with its spatial axes last (what the ambiguity note looks at)."""
        arrays = self.arrays.get(layer.name)
        if not arrays or layer.kind not in KERNEL_KINDS:
            return {}
        kernel = arrays[0]
        rank = kernel.ndim - 2
        moved = np.moveaxis(kernel, tuple(range(rank)), tuple(range(2, kernel.ndim)))
        return {"weight": moved, "depthwise.weight": moved}


def swapped_blocks(array: np.ndarray, count: int, first: int, second: int, axis: int = -1) -> np.ndarray:
    """``array`` with gate blocks ``first`` and ``second`` of ``count`` on ``axis`` swapped."""
    blocks = np.split(array, count, axis=axis)
    blocks[first], blocks[second] = blocks[second], blocks[first]
    return np.concatenate(blocks, axis=axis)


def spatial_mistakes(kernel: np.ndarray, spatial: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """The kernel flipped on its spatial axes, and with its two spatial axes swapped where they are equal,
    each only where it can change the kernel (a 1-wide axis flips into itself)."""
    found = []
    if any(kernel.shape[axis] > 1 for axis in spatial):
        found.append(("missing or extra 180-degree flip (convolution vs correlation)", np.flip(kernel, spatial).copy()))
    if len(spatial) == 2 and kernel.shape[spatial[0]] == kernel.shape[spatial[1]] > 1:
        found.append(("kernel rows and columns swapped (H/W transposed)",
                      np.ascontiguousarray(np.swapaxes(kernel, *spatial))))
    return found


def gate_swaps(gates: str) -> list[tuple[str, int, int]]:
    """Each pair of gate blocks (in a runtime's gate order) that a writer could have swapped."""
    return [(f"RNN gate blocks {gates[i]} and {gates[j]} swapped (gate order)", i, j)
            for i in range(len(gates)) for j in range(i + 1, len(gates))]


def keras_mistakes(layer: Layer, source: Model, arrays: list[np.ndarray]) -> list[tuple[str, list[np.ndarray]]]:
    """The file's arrays with one classic mistake undone each, in Keras's own layouts (kernels' spatial
    axes first, Dense kernels (in, out), gate blocks on the last axis)."""
    found: list[tuple[str, list[np.ndarray]]] = []
    if layer.kind in KERNEL_KINDS:
        found += [(mistake, [kernel] + arrays[1:])
                  for mistake, kernel in spatial_mistakes(arrays[0], tuple(range(arrays[0].ndim - 2)))]
    if layer.kind == "dense" and not layer.attrs.get("time_distributed"):
        feeding = flatten_feeding(source, layer)
        if feeding is not None:
            (channels, *spatial), order = feeding
            kernel = arrays[0]
            if order == "hwc":  # rows left in C,H,W order: put them in H,W,C order
                rows = kernel.reshape(channels, *spatial, -1)
                moved = np.moveaxis(rows, 0, -2)
            else:
                rows = kernel.reshape(*spatial, channels, -1)
                moved = np.moveaxis(rows, -2, 0)
            found.append(("Dense rows not permuted after Flatten (C,H,W vs H,W,C order)",
                          [np.ascontiguousarray(moved).reshape(kernel.shape)] + arrays[1:]))
    if layer.kind in RNN_KINDS:
        count = len(GATES[layer.kind])
        for mistake, i, j in gate_swaps(GATES[layer.kind]):
            found.append((mistake, [swapped_blocks(a, count, i, j) if a.shape[-1] % count == 0 else a
                                    for a in arrays]))
    return found


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class Loaded:
    """The converted file loaded layer by layer into Keras layers."""

    arrays: dict[str, list[np.ndarray]]
    unavailable: dict[str, str]
    problems: list[str]
    notes: list[str]
    convolving: bool


def load_converted(source: Model, path: str) -> Loaded:
    """Every weighted source layer's arrays, read from ``path`` the way Keras loads them (see the module)."""
    arrays: dict[str, list[np.ndarray]] = {}
    unavailable: dict[str, str] = {}
    problems: list[str] = []
    notes: list[str] = []
    try:
        keras_file = KerasFile(path)
    except (OSError, Unloadable) as error:
        return Loaded({}, {}, [f"the file does not open as Keras weights: {error}"], [], False)
    built: dict[str, Any] = {}
    weighted = source.weighted_layers()
    for layer in weighted:
        try:
            built[layer.name] = build_keras_layer(layer, source)
        except NotImplementedError as reason:
            unavailable[layer.name] = f"not built in Keras here: {reason}"
    try:
        by_order = len(keras_file.weighted) == len(weighted)
        if keras_file.kind == "legacy" and not by_order:
            problems.append(f"Keras's load_weights matches weighted layers by order: the file has "
                            f"{len(keras_file.weighted)} groups with weights, the source {len(weighted)} weighted "
                            "layers")
        keys = keras3_keys(source)
        for position, layer in enumerate(weighted):
            keras_layer = built.get(layer.name)
            if keras_layer is None and layer.kind == "custom" and keras_file.kind == "keras3":
                try:
                    keras_file.claim_kept(keys[layer.name], [tuple(t.shape) for t in layer.tensors.values()])
                except Unloadable as error:
                    problems.append(f"{layer.name}: {error}")
                continue
            if keras_layer is None:
                continue
            try:
                if keras_file.kind == "legacy":
                    group = legacy_group(keras_file, layer, position if by_order else None, notes)
                    assign(variables(keras_layer), keras_file.legacy_arrays(group), f"group {group}")
                else:
                    keras_file.load_keras3(keys[layer.name], keras_layer)
            except Unloadable as error:
                problems.append(f"{layer.name}: {error}")
                unavailable[layer.name] = f"its weights do not load into Keras's {type(keras_layer).__name__}: {error}"
                continue
            arrays[layer.name] = [np.array(v.numpy(), copy=True) for v in variables(keras_layer)]
        if keras_file.kind == "keras3":
            problems += [f"{name} holds arrays no layer of the source takes" for name in keras_file.unclaimed()]
    finally:
        keras_file.close()
    return Loaded(arrays, unavailable, problems, notes, keras_file.backend == "theano")


def legacy_group(keras_file: KerasFile, layer: Layer, position: int | None, notes: list[str]) -> str:
    """The group Keras's ``load_weights`` gives a layer: the one at its position among the weighted groups
    (``position`` None when the counts differ and Keras would load nothing: then the group of its name)."""
    if position is not None:
        group = keras_file.weighted[position]
        if group != layer.name:
            notes.append(f"layer {layer.name} loads from group {group} (Keras matches legacy HDF5 by order)")
        return group
    if layer.name in keras_file.root:
        return layer.name
    raise Unloadable("the file has no group for it")


# -------------------------------------------------------------------------------- the source model in Keras 3


def unrecognized_keywords(error: BaseException) -> tuple[str, list[str]] | None:
    """(class, keywords) when Keras 3 refused a config's keywords that an older Keras wrote (tf.keras 2's
    ``groups`` on DepthwiseConv2D, ``time_major`` on RNNs)."""
    found = re.search(r"Unrecognized keyword arguments passed to (\w+): (\{.*\})\s*$", str(error), re.MULTILINE)
    if not found:
        return None
    try:
        return found.group(1), list(ast.literal_eval(found.group(2)))
    except (ValueError, SyntaxError):
        return None


def without_keywords(config: Any, class_name: str, keywords: list[str]) -> None:
    if isinstance(config, dict):
        if config.get("class_name") == class_name and isinstance(config.get("config"), dict):
            for keyword in keywords:
                config["config"].pop(keyword, None)
        for value in config.values():
            without_keywords(value, class_name, keywords)
    elif isinstance(config, list):
        for value in config:
            without_keywords(value, class_name, keywords)


def rebuild_from_config(path: str) -> Any:
    """An older Keras's HDF5 model config rebuilt by Keras 3's legacy loader, keywords Keras 3 no longer
    takes dropped; the file's own weights loaded with ``load_weights``."""
    import h5py
    from keras.src.legacy.saving import saving_utils
    with h5py.File(path, "r") as handle:
        config = json.loads(text(handle.attrs["model_config"]))
    for _ in range(64):
        try:
            model = saving_utils.model_from_config(copy.deepcopy(config))
            break
        except (TypeError, ValueError) as error:
            refused = unrecognized_keywords(error)
            if refused is None:
                raise
            without_keywords(config, *refused)
    else:
        raise ValueError("too many keywords Keras 3 does not take")
    model.load_weights(path)
    return model


def unfaithful(source: Model) -> str | None:
    """Why a Keras 3 rebuild of a Keras source does not compute what the source's Keras computed, or None."""
    details = source.source.details
    major = details.get("keras_major")
    odd = [layer.name for layer in source.layers if layer.attrs.get("same_convention") == "theano"
           and layer.attrs.get("padding") == "same" and any(before != (before + after) // 2
                                                           for before, after in layer.attrs.get("pads") or [])]
    if odd:
        return (f"the source ran on Theano, whose 'same' padding puts an odd pad first; Keras 3 puts it last, so "
                f"a Keras 3 model of it computes {', '.join(odd)} differently")
    hard = [layer.name for layer in source.layers if "hard_sigmoid" in (layer.attrs.get("activation"),
                                                                        layer.attrs.get("recurrent_activation"))]
    if hard and major is not None and major < 3:
        return (f"layers {', '.join(hard)} use Keras {major}'s hard_sigmoid, clip(0.2 x + 0.5, 0, 1); Keras 3's is "
                "relu6(x + 3) / 6")
    return None


def source_keras_model(source: Model) -> tuple[Any, str | None]:
    """The source model rebuilt by Keras 3 with its own weights, or (None, why not)."""
    if not source.source.format.startswith("keras"):
        return None, f"the source is {source.source.format}: Keras cannot rebuild its architecture"
    if not source.has_architecture:
        return None, "the source file holds weights only, no model config for Keras to rebuild"
    reason = unfaithful(source)
    if reason:
        return None, reason
    try:
        import keras
    except ImportError:
        return None, "keras is not installed (pip install 'weightport[tensorflow]')"
    path = source.source.path
    try:
        return keras.saving.load_model(path, compile=False), None
    except Exception as error:  # Keras 3 refuses configs of older Kerases in many ways: say which
        first = error
    if path.lower().endswith((".h5", ".hdf5")):
        try:
            return rebuild_from_config(path), None
        except Exception as error:
            first = error
    return None, f"Keras 3 cannot rebuild the source's model ({said(first, last=True)})"


def run_model(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's one output on ``x``, fed in the structure its config declares (a list for a legacy
    functional model listing its inputs)."""
    try:
        listed = isinstance(model.input, list)
    except (AttributeError, ValueError):  # a Sequential model never called yet: one plain input
        listed = False
    outputs = model([x] if listed else x, training=False)
    if isinstance(outputs, (list, tuple, dict)):
        raise NotImplementedError("the model has several outputs")
    import keras
    return keras.ops.convert_to_numpy(outputs)


# ------------------------------------------------------------------------------------------------ validator


def rebuilt_source(source: Model, convolving: bool) -> Any:
    """The source's architecture rebuilt in Keras 3 (run on the recorded input, or on the seeded random input
    the source's own framework ran: weightport.checks.source_reference); NotImplementedError saying why the
    whole model cannot be checked in Keras 3."""
    if convolving:
        raise NotImplementedError("the file is written for Keras on Theano (its backend attribute): Keras 3 correlates")
    model, why = source_keras_model(source)
    if model is None:
        raise NotImplementedError(f"{why}; each weighted layer is checked alone")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotImplementedError("the rebuilt model has several inputs or outputs")
    return model


def load_weights(model: Any, path: str) -> None:
    """Every variable of ``model`` zeroed, then the converted file loaded by Keras's ``Model.load_weights``
    (so the file must supply every one); Refused with Keras's reason when it does not load."""
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    try:
        model.load_weights(path)
    except Exception as error:  # Keras refuses the file in many ways: say which
        raise Refused(said(error)) from None


def activation_notes(source: Model) -> list[str]:
    major = source.source.details.get("keras_major")
    if major is None or major >= 3:
        return []
    return [f"layer {layer.name} uses Keras {major}'s hard_sigmoid; a Keras 3 model of it needs "
            "activation=lambda x: keras.ops.clip(0.2 * x + 0.5, 0, 1) to compute what the source did"
            for layer in source.layers if layer.attrs.get("recurrent_activation") == "hard_sigmoid"
            or layer.attrs.get("activation") == "hard_sigmoid"]
