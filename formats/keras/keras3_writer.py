"""Keras 3 ``.weights.h5`` output (``--to keras`` with a ``.weights.h5`` output): the same datasets at the
same paths as Keras 3's own ``save_weights``, kernels in Keras layouts.
"""

from __future__ import annotations

import os

import h5py

from weightport.core.atomic import atomic_path, check_free_space
from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.model import Layer, Model, is_bidirectional
from weightport.core.options import WriteOptions
from weightport.core.plan import plan_by_layer
from weightport.core.progress import Progress
from weightport.formats.keras import hdf5
from weightport.formats.keras.hdf5 import HDF5_OVERHEAD
from weightport.formats.keras.layers import keras_plan, snake_case, stacked_as_keras_layers


def layer_group_keys(model: Model) -> dict[str, str]:
    """Canonical layer name -> its group path under ``layers/``: the class key, ``_1``, ``_2`` ... per
    repeated class, counted in layer order within each model; a layer of a nested model sits under its
    model's key (``functional/layers/conv2d``).

    Keras 3 counts the repeats of a class among the layers of one model, weightless ones included,
    and a nested model is a layer of its parent keyed by its class (``sequential``, ``functional``).
    Weightless classes never share a key with weighted ones, so the weighted layers and the nested
    models (met in layer order, so an inner model without weights still takes its number) fix every key.
    """
    counters: dict[str, dict[str, int]] = {}
    container_keys: dict[tuple[str, ...], str] = {}

    def numbered(parent: str, base: str) -> str:
        seen = counters.setdefault(parent, {})
        count = seen.get(base, 0)
        seen[base] = count + 1
        return f"{base}_{count}" if count else base

    def parent_path(layer: Layer) -> str:
        path, identity = "", ()
        for class_key, name in layer.attrs.get("keras_containers", []):
            identity += (name,)
            if identity not in container_keys:
                container_keys[identity] = path + numbered(path, class_key)
            path = container_keys[identity] + "/layers/"
        return path

    parents = {layer.name: parent_path(layer) for layer in model.layers}
    keys: dict[str, str] = {}
    for layer in model.weighted_layers():
        base = "bidirectional" if is_bidirectional(layer) else custom_key(layer) if layer.kind == "custom" else \
            KERAS3_CLASS_KEYS[layer.kind].format(rank=layer.attrs.get("rank", 2))
        keys[layer.name] = parents[layer.name] + numbered(parents[layer.name], base)
    return keys


KERAS3_CLASS_KEYS: dict[str, str] = {
    "conv": "conv{rank}d", "conv_transpose": "conv{rank}d_transpose", "depthwise": "depthwise_conv{rank}d",
    "separable": "separable_conv{rank}d", "dense": "dense", "batchnorm": "batch_normalization",
    "embedding": "embedding", "prelu": "p_re_lu", "lstm": "lstm", "gru": "gru", "layernorm": "layer_normalization",
}  # Keras 3 names a layer's group by its class in snake case (Conv2DTranspose -> conv2d_transpose, PReLU -> p_re_lu)
def custom_key(layer: Layer) -> str:
    """A kept custom layer's group key: its class (without a registered package) in snake case, as Keras 3
    names it; "" when a weights-only file does not say its class."""
    known = layer.source_class not in (None, "", "Unknown") and not (layer.source_class or "").startswith("Unknown")
    return snake_case((layer.source_class or "").rpartition(">")[2]) if known else ""  # "pkg>Class": Class


DIRECTION_GROUPS = {"forward": "forward_layer", "backward": "backward_layer"}


def variable_group(layer: Layer, variable: str, key: str) -> str:
    """HDF5 group of one Keras variable: ``layers/<key>[/forward_layer|/backward_layer][/cell]/vars``."""
    path = f"layers/{key}"
    scope, _, _ = variable.rpartition("/")
    if scope:
        path += "/" + DIRECTION_GROUPS[scope.split("_")[0]]
    if layer.kind in ("lstm", "gru"):
        path += "/cell"
    return path + "/vars"


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """Keras 3 ``.weights.h5`` that ``model.load_weights`` of the same architecture loads.

    Each weighted layer's variables go to ``layers/<class key>/vars/0, 1, ...``
    in Keras's variable order (RNN cells under ``cell/vars``, a bidirectional
    RNN under ``forward_layer`` / ``backward_layer``), kernels in Keras layouts
    (the same plan as the legacy Keras HDF5 writer); bfloat16 tensors carry
    Keras's ``dtype`` attribute.  Weightless layers need no group.
    """
    if not path.lower().endswith(".weights.h5"):
        raise UsageError(f"weightport writes Keras 3 weights as .weights.h5, not {os.path.basename(path)!r}",
                         path=path, fix="Name the output NAME.weights.h5 and load it with model.load_weights")
    unknown = [layer.name for layer in model.weighted_layers()
               if layer.kind not in KERAS3_CLASS_KEYS and not (layer.kind == "custom" and custom_key(layer))]
    if unknown:
        raise UnsupportedError(f"layers {', '.join(unknown)} have no known Keras 3 class, so their group names "
                               "cannot be known", fix="Convert to legacy Keras HDF5 (.h5), matched by layer order")
    model = stacked_as_keras_layers(model)  # a torch RNN of num_layers N: N Keras layers
    plan = keras_plan(model, options)
    keys = layer_group_keys(model)
    check_free_space(path, sum(item.nbytes for item in plan.tensors) + HDF5_OVERHEAD * (1 + len(plan.tensors)))
    datasets = hdf5.StreamedDatasets()
    with atomic_path(path, options.force) as temporary:
        with h5py.File(temporary, "w") as handle:
            handle.create_group("vars").attrs["name"] = "model"
            for layer, items in plan_by_layer(plan):
                for item in items:
                    group = handle.require_group(variable_group(layer, item.key[len(layer.name) + 1:],
                                                                keys[layer.name]))
                    group.attrs.setdefault("name", layer.name)
                    datasets.add(group, str(len(group)), item)
        with Progress(f"writing {os.path.basename(path)}", datasets.nbytes, options.quiet) as progress:
            datasets.fill(temporary, progress)
    return plan.warnings
