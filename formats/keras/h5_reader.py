"""Keras legacy HDF5 files (Keras 1, Keras 2 multi-backend, tf.keras 2, Keras 3 ``model.save('x.h5')``).

Layout of the file: root attributes ``keras_version``, ``backend`` (absent in
Keras 1) and ``model_config`` (JSON, parsed as data only); weights under
``model_weights`` (``model.save``) or the root (``save_weights``), one group
per layer listed in the ``layer_names`` attribute (split into ``layer_names0``,
``layer_names1``, ... on big models), each with a ``weight_names`` attribute
giving the dataset paths in the layer's weight order.

Kernels are read as stored (Keras ``h w i o`` family, or ``o i h w`` for Keras 1
``dim_ordering='th'``) and mapped lazily to canonical layouts; the semantics of
each kernel comes from :mod:`weightport.core.rules`.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from weightport.core.errors import BadInputError, UnsupportedError, UsageError, WeightportError
from weightport.core.layout import concat_blocks, CORRELATION, Layout, NO_SEMANTICS
from weightport.core.steps import Relayout, ReorderBlocks, TakeIndex
from weightport.core.model import Layer, Model, Provenance, SourceInfo, Tensor, array_tensor
from weightport.core.options import ReadOptions
from weightport.core.rules import keras_flatten_order, keras_same_convention, keras_kernel_semantics, keras_major, normalize_backend
from weightport.core.shapes import SPATIAL_KINDS, map_layers, settle_concat_axes, feeding_flatten, flatten_patterns, flattened_map_shape, infer_shapes
from weightport.formats.keras import hdf5
from weightport.formats.keras.infer import infer_class, wrapper_of
from weightport.formats.keras.cudnn import cudnn_tensors, is_cudnn
from weightport.formats.keras.config import KerasLayerDecl, input_shape, model_layers
from weightport.formats.keras.layers import (
    BATCHNORM_PARAMS, CONV_KINDS, LAYERNORM_PARAMS, WEIGHTED_SIMPLE, WEIGHTLESS, as_tuple, conv_attrs, conv_params,
    data_format, kernel_patterns,
)

NAME = "keras_h5"
DESCRIPTION = "Keras HDF5 (Keras 1, 2, tf.keras, Keras 3 legacy .h5)"
EXTENSIONS = (".h5", ".hdf5")

KERAS1_SUFFIXES = {"W": "kernel", "b": "bias", "running_std": "moving_variance",
                   "running_mean": "moving_mean", "gamma": "gamma", "beta": "beta"}


def sniff(path: str) -> bool:
    """True for an HDF5 file with Keras weights (``layer_names`` at the root or under ``model_weights``)."""
    if not hdf5.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            return "layer_names" in root.attrs or "layer_names0" in root.attrs
    except hdf5.H5_ERRORS:
        return False


def read(path: str, options: ReadOptions) -> Model:
    """Read a Keras HDF5 file into the canonical model (tensors stay in the file until loaded)."""
    handle = hdf5.open_hdf5(path)
    try:
        return KerasH5Reader(path, handle, options).model()
    except WeightportError as error:
        handle.close()
        raise error.with_path(path)
    except hdf5.H5_ERRORS as error:
        handle.close()
        raise BadInputError(f"Keras file structure not understood ({type(error).__name__}: {error})",
                            path=path, fix="Check the file was written by Keras model.save or save_weights") from None


class KerasH5Reader:
    """One reading of one file."""

    def __init__(self, path: str, handle: h5py.File, options: ReadOptions) -> None:
        self.path = path
        self.handle = handle
        self.options = options
        self.root = handle["model_weights"] if "model_weights" in handle else handle
        self.version = hdf5.text_attr(handle.attrs, "keras_version") or hdf5.text_attr(self.root.attrs, "keras_version")
        stored_backend = hdf5.text_attr(handle.attrs, "backend") or hdf5.text_attr(self.root.attrs, "backend")
        self.stored_backend = normalize_backend(stored_backend)
        self.backend = normalize_backend(options.assume_backend) or self.stored_backend
        self.major = keras_major(self.version) if self.version else (1 if self.backend is None else None)
        self.config = hdf5.json_attr(handle.attrs, "model_config", path)

    # -- top level -------------------------------------------------------------------------------
    def model(self) -> Model:
        source = SourceInfo(self.path, NAME, self.version, self.backend,
                            {"backend_recorded": self.stored_backend is not None,
                             "keras_major": self.major})
        model = Model(source)
        layer_names = hdf5.name_list_attr(self.root.attrs, "layer_names")
        decls = self.declarations(layer_names)
        model.has_architecture = self.config is not None
        default_format = self.default_data_format(decls)
        source.details["data_format"] = default_format
        self.unknown: list[Layer] = []
        for decl in decls:
            model.layers.append(self.layer(decl, default_format))
        refuse_or_keep_unknown(model, self.unknown, self.options.keep_unknown, self.config is None)
        if self.config is None:
            model.warn("the file holds weights only (no model config): layer kinds are taken from names, weights "
                       "and --layer-kinds, graph order and shapes are unknown, and no Flatten is seen, so the rows of "
                       "a Dense after a Flatten of a map are kept as stored (Keras's order); convert the full "
                       "model file (model.save) for an exact port")
            model.layers = [layer for layer in model.layers if layer.tensors]
        self.set_input_shape(model, decls, default_format)
        infer_shapes(model)
        settle_concat_axes(model, map_layers(model))
        self.permute_dense_after_flatten(model)
        return model

    def declarations(self, layer_names: list[str]) -> list[KerasLayerDecl]:
        if self.config is not None:
            decls, _ = model_layers(self.config, self.path)
        else:
            decls = [KerasLayerDecl(name, guess_class(name), {}) for name in layer_names]
            for decl in decls:
                inner = self.wrapped_class(decl.name)
                if decl.class_name == "Unknown" and inner:
                    decl.class_name, decl.config = "Bidirectional", {"layer": {"class_name": inner, "config": {}}}
        self.index = self.weight_index(layer_names, {decl.name for decl in decls})
        strangers = sorted(set(self.options.layer_kinds) - {decl.name for decl in decls})
        if strangers:
            raise UsageError(f"{{opt:layer_kinds}} names layers the file does not hold: {', '.join(strangers)}",
                             fix="Use the layer names that weightport inspect shows")
        for decl in decls:
            self.settle_class(decl)
        return decls

    def settle_class(self, decl: KerasLayerDecl) -> None:
        """``--layer-kinds`` first; in a weights-only file, an unknown name's class from its weights."""
        given = self.options.layer_kinds.get(decl.name)
        if given:
            decl.class_name = given
            decl.config = {} if self.config is None else decl.config
        elif self.config is None and decl.class_name == "Unknown":
            inferred = infer_class(self.weights_of(decl.name))
            wrapper = wrapper_of(decl.name)
            if inferred and wrapper:
                decl.class_name, decl.config = wrapper, {"layer": {"class_name": inferred, "config": {}}}
            elif inferred:
                decl.class_name = inferred

    def wrapped_class(self, name: str) -> str | None:
        """For a config-less Bidirectional group, the wrapped RNN class from its ``forward_<x>`` path."""
        if name not in self.root:
            return None
        for weight_name in hdf5.name_list_attr(self.root[name].attrs, "weight_names"):
            for part in weight_name.split("/"):
                if part.startswith("forward_"):
                    return guess_class(part[len("forward_"):])
        return None

    def weight_index(self, layer_names: list[str], known: set[str]) -> dict[str, dict[str, tuple[str, h5py.Dataset]]]:
        """Layer name -> its variables, for every group in ``layer_names``.

        A weight belongs to the last known layer name on its path, so the
        layers of a nested model (stored in the nested model's group) are found
        too; otherwise to the group itself.
        """
        index: dict[str, dict[str, tuple[str, h5py.Dataset]]] = {}
        for group_name in layer_names:
            if group_name not in self.root:
                continue
            group = self.root[group_name]
            for weight_name in hdf5.name_list_attr(group.attrs, "weight_names"):
                dataset = group[weight_name]
                if not isinstance(dataset, h5py.Dataset):
                    raise BadInputError(f"weight {group_name}/{weight_name} is not a dataset")
                hdf5.check_declared_size(dataset, self.path)
                owners = [part for part in weight_name.split("/")[:-1] if part in known]
                owner = owners[-1] if owners else group_name
                index.setdefault(owner, {})[short_name(owner, weight_name, self.major == 1)] = (f"{group.name}/{weight_name}", dataset)
        return index

    def default_data_format(self, decls: list[KerasLayerDecl]) -> str:
        for decl in decls:
            if decl.class_name in CONV_KINDS or decl.class_name in WEIGHTLESS:
                rank = CONV_KINDS[decl.class_name][1] if decl.class_name in CONV_KINDS else None
                fmt = data_format(decl.config, "", rank)
                if fmt:
                    return fmt
        return "channels_first" if self.major == 1 and self.backend == "theano" else "channels_last"

    def weights_of(self, name: str) -> dict[str, tuple[str, h5py.Dataset]]:
        """Variables of layer ``name``: short name (``kernel``, ``bias``, ...) -> (key, dataset)."""
        return self.index.get(name, {})

    # -- layers --------------------------------------------------------------------------------
    def layer(self, decl: KerasLayerDecl, default_format: str) -> Layer:
        cls, config = decl.class_name, decl.config
        layer = Layer(decl.name, "other", {}, {}, list(decl.inbound), source_class=cls)
        weights = self.weights_of(decl.name)
        wrapper = cls if cls in ("Bidirectional", "TimeDistributed") else None
        if wrapper:
            inner = config.get("layer", {})
            cls, config = inner.get("class_name", ""), dict(inner.get("config", {}))
            layer.source_class = f"{wrapper}({cls})"
            if wrapper == "Bidirectional":
                config["_directions"] = 2
                config["_merge_mode"] = decl.config.get("merge_mode", "concat")
        if wrapper == "Bidirectional" and cls not in ("LSTM", "GRU"):
            raise UnsupportedError(f"layer {decl.name!r}: Bidirectional({cls}) is not supported",
                                   fix="Only Bidirectional LSTM and GRU are converted")
        if cls in CONV_KINDS:
            kind, rank = CONV_KINDS[cls]
            layer.kind = kind
            layer.attrs = conv_attrs(cls, config, rank, default_format)
            layer.attrs["same_convention"] = keras_same_convention(self.backend)
            self.conv_tensors(layer, weights)
        elif cls in WEIGHTED_SIMPLE:
            layer.kind = WEIGHTED_SIMPLE[cls]
            getattr(self, f"{layer.kind}_tensors")(layer, config, weights)
        elif cls in WEIGHTLESS:
            layer.kind = WEIGHTLESS[cls]
            layer.attrs = weightless_attrs(layer.kind, cls, config, default_format)
        elif weights:
            self.keep_unknown(layer, weights)
        if cls == "Lambda":
            layer.attrs["note"] = "Lambda code not run (config read as data only)"
        if wrapper == "TimeDistributed":
            layer.attrs["time_distributed"] = True
        if decl.config.get("_input_indices"):  # which output of each input layer it reads (several outputs)
            layer.attrs["input_indices"] = list(decl.config["_input_indices"])
        if decl.config.get("_containers"):
            layer.attrs["keras_containers"] = decl.config["_containers"]
        return layer

    def keep_unknown(self, layer: Layer, weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        """A layer weightport cannot map (a custom layer, or a weights-only layer its weights do not decide):
        kind ``custom``, its tensors as stored under their own variable names (``attention_W``)."""
        layer.kind = "custom"
        for key, dataset in weights.values():
            param = key.rsplit("/", 1)[-1].split(":")[0]
            pattern = " ".join(f"x{axis}" for axis in range(dataset.ndim))
            layer.tensors[param] = self.tensor(param, key, dataset, pattern, pattern, NO_SEMANTICS, None)
        self.unknown.append(layer)

    def conv_tensors(self, layer: Layer, weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        rank, kind, attrs = layer.attrs["rank"], layer.kind, layer.attrs
        semantics, rule = self.semantics(layer.source_class or "")
        layer.semantics_rule = rule
        for spec in conv_params(kind, rank, "bias" in weights):
            key, dataset = self.require(weights, spec.variable, layer)
            if spec.role is None:
                layer.tensors[spec.param] = self.tensor(spec.param, key, dataset, "o", "o", NO_SEMANTICS, None)
                continue
            src, dst = kernel_patterns(spec.role, attrs["data_format"], self.major, dataset.ndim)
            sem = NO_SEMANTICS if spec.role.startswith("pointwise") else semantics
            layer.tensors[spec.param] = self.tensor(spec.param, key, dataset, src, dst, sem, rule)
        kernel = layer.tensors["depthwise.weight" if kind == "separable" else "weight"].shape
        if attrs["kernel_size"] is None:
            attrs["kernel_size"] = tuple(kernel[2:])
        if kind == "conv":
            attrs.setdefault("filters", kernel[0])
            attrs["out_channels"], attrs["in_channels"] = kernel[0], kernel[1] * attrs["groups"]
        elif kind == "conv_transpose":
            attrs.setdefault("filters", kernel[1])
            attrs["out_channels"], attrs["in_channels"] = kernel[1] * attrs["groups"], kernel[0]
        else:
            src_shape = layer.tensors["depthwise.weight" if kind == "separable" else "weight"].source_shape
            channels = src_shape[-2] if self.major != 1 or attrs["data_format"] != "channels_first" else src_shape[1]
            attrs["in_channels"] = int(channels)
            attrs["groups"] = int(channels)
            attrs["depth_multiplier"] = kernel[0] // int(channels)
            attrs["out_channels"] = (layer.tensors["pointwise.weight"].shape[0] if kind == "separable"
                                     else kernel[0])
        if kind == "conv_transpose" and attrs["padding"] in ("valid", "same"):
            attrs["pads"] = transpose_pads(attrs)

    def dense_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        key, dataset = self.require(weights, "kernel", layer)
        layer.tensors["weight"] = self.tensor("weight", key, dataset, "i o", "o i", NO_SEMANTICS, None)
        if "bias" in weights:
            layer.tensors["bias"] = self.tensor("bias", *weights["bias"], "o", "o", NO_SEMANTICS, None)
        layer.attrs = {"units": int(dataset.shape[-1]), "activation": config.get("activation", "linear"),
                       "use_bias": "bias" in weights}

    def batchnorm_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        mean_key, mean = self.require(weights, "moving_mean", layer)
        for spec in BATCHNORM_PARAMS:
            if spec.variable in weights:
                layer.tensors[spec.param] = self.tensor(spec.param, *weights[spec.variable], "o", "o", NO_SEMANTICS, None)
            else:
                fill = np.ones if spec.variable == "gamma" else np.zeros
                layer.tensors[spec.param] = array_tensor(
                    spec.param, fill(mean.shape, mean.dtype), Layout("o"),
                    Provenance(f"(none: {spec.variable} absent, identity value)", "o"))
        layer.attrs = {"epsilon": float(config.get("epsilon", 1e-3)),
                       "momentum": float(config.get("momentum", 0.99)),
                       "axis": config.get("axis", -1), "num_features": int(mean.shape[0])}
        if self.major == 1:
            layer.attrs["note"] = "Keras 1 running_std holds the variance"

    def layernorm_tensors(self, layer: Layer, config: dict[str, Any],
                          weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        """A LayerNormalization over one axis: gamma and beta (F,) as stored (an absent one is the identity,
        ones or zeros); ``axis`` is Keras's (batch counted as 0, negative from the end).  Over several axes,
        or with Keras 3's rms_scaling, it is kept as an unknown layer (its own computation)."""
        axis = config.get("axis", -1)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        stored = [weights[v] for v in ("gamma", "beta") if v in weights]
        if len(axes) != 1 or config.get("rms_scaling") or not stored or any(d.ndim != 1 for _, d in stored):
            self.keep_unknown(layer, weights)
            layer.attrs["note"] = "LayerNormalization over several axes or with rms_scaling is not ported"
            return
        width = stored[0][1].shape
        for spec in LAYERNORM_PARAMS:
            if spec.variable in weights:
                layer.tensors[spec.param] = self.tensor(spec.param, *weights[spec.variable], "o", "o", NO_SEMANTICS,
                                                        None)
            else:
                fill = np.ones if spec.variable == "gamma" else np.zeros
                layer.tensors[spec.param] = array_tensor(
                    spec.param, fill(width, stored[0][1].dtype), Layout("o"),
                    Provenance(f"(none: {spec.variable} absent, identity value)", "o"))
        layer.attrs = {"epsilon": float(config.get("epsilon", 1e-3)), "axis": int(axes[0]),
                       "center": "beta" in weights, "scale": "gamma" in weights, "num_features": int(width[0])}

    def embedding_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        key, dataset = self.require(weights, "embeddings", layer)
        layer.tensors["weight"] = self.tensor("weight", key, dataset, "n e", "n e", NO_SEMANTICS, None)
        layer.attrs = {"input_dim": int(dataset.shape[0]), "output_dim": int(dataset.shape[1]),
                       "mask_zero": bool(config.get("mask_zero", False))}

    def prelu_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        key, dataset = self.require(weights, "alpha", layer)
        pattern = {1: "c", 2: "w c", 3: "h w c", 4: "d h w c"}[dataset.ndim]
        canonical = "c " + pattern[:-2] if dataset.ndim > 1 else "c"
        if all(size == 1 for size in dataset.shape[:-1]):  # shared over every other axis: per channel,
            pattern, canonical = " ".join(["1"] * (dataset.ndim - 1) + ["c"]), "c"  # torch.nn.PReLU's (C,)
        layer.tensors["weight"] = self.tensor("weight", key, dataset, pattern, canonical.strip(), NO_SEMANTICS, None)
        layer.attrs = {"shared_axes": config.get("shared_axes")}

    def lstm_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        self.rnn_tensors(layer, config, weights, gates="ifco", canonical_gates="ifco")

    def gru_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]]) -> None:
        self.rnn_tensors(layer, config, weights, gates="zrh", canonical_gates="rzh")

    def rnn_tensors(self, layer: Layer, config: dict[str, Any], weights: dict[str, tuple[str, h5py.Dataset]],
                    gates: str, canonical_gates: str) -> None:
        """Keras kernel (in, G*u), recurrent_kernel (u, G*u), bias -> PyTorch weight_ih/hh, bias_ih/hh.

        A Bidirectional wrapper's backward weights (``backward/kernel``, ...) become the
        ``*_reverse`` tensors of a bidirectional PyTorch RNN.
        """
        reorder = (ReorderBlocks(0, gates, canonical_gates),)
        weights = join_keras1_gates(weights, gates)
        bias_rows = weights["bias"][1].ndim if "bias" in weights else 1
        reset_after = bool(config.get("reset_after", bias_rows == 2)) if layer.kind == "gru" else True
        directions = [("", "")] + ([("backward/", "_reverse")] if config.get("_directions") == 2 else [])
        cudnn = is_cudnn(layer.source_class or "", weights)
        reset_after = reset_after or cudnn  # cuDNN's GRU applies the reset gate after the recurrent product
        for prefix, suffix in directions:
            if cudnn:
                for name in ("kernel", "recurrent_kernel", "bias"):
                    self.require(weights, prefix + name, layer)
                layer.tensors.update(cudnn_tensors(weights, prefix, suffix, gates, canonical_gates))
                continue
            for param, variable in (("weight_ih_l0", "kernel"), ("weight_hh_l0", "recurrent_kernel")):
                key, dataset = self.require(weights, prefix + variable, layer)
                layer.tensors[param + suffix] = self.tensor(param + suffix, key, dataset, "i o", "o i",
                                                            NO_SEMANTICS, None, reorder)
            if prefix + "bias" not in weights:
                continue
            key, dataset = weights[prefix + "bias"]
            if dataset.ndim == 2:
                for index, param in enumerate(("bias_ih_l0", "bias_hh_l0")):
                    layer.tensors[param + suffix] = self.tensor(param + suffix, key, dataset, "o", "o", NO_SEMANTICS,
                                                                None, (TakeIndex(index, 2),) + reorder,
                                                                pattern_after_take=True)
            else:
                layer.tensors["bias_ih_l0" + suffix] = self.tensor("bias_ih_l0" + suffix, key, dataset, "o", "o",
                                                                   NO_SEMANTICS, None, reorder)
                layer.tensors["bias_hh_l0" + suffix] = array_tensor(
                    "bias_hh_l0" + suffix, np.zeros(dataset.shape, dataset.dtype), Layout("o"),
                    Provenance("(none: Keras has one bias; recurrent bias is zero)", "o"))
        units = layer.tensors["weight_hh_l0"].shape[1]
        merge = config.get("_merge_mode") if len(directions) == 2 else None
        layer.attrs = {"bidirectional": len(directions) == 2,
                       "merge_mode": "none" if len(directions) == 2 and merge is None else merge,  # none: 2 outputs
                       "units": int(units), "return_sequences": bool(config.get("return_sequences", False)),
                       "go_backwards": bool(config.get("go_backwards", False)),
                       "activation": config.get("activation", "tanh"),
                       "recurrent_activation": config.get("recurrent_activation",
                                                          config.get("inner_activation", "sigmoid")),
                       "reset_after": reset_after, "gates_source": gates,
                       "zero_output_for_mask": bool(config.get("zero_output_for_mask", False))}
        if cudnn:
            layer.attrs["cudnn"] = True

    # -- tensors ------------------------------------------------------------------------------------
    def semantics(self, layer_class: str) -> tuple[str, str]:
        """(semantics, rule id) of a convolution layer's kernels, honouring --source-semantics."""
        if self.options.source_semantics:
            return self.options.source_semantics, "--source-semantics given by the user"
        semantics, rule = keras_kernel_semantics(self.version, self.backend, layer_class, self.path)
        return semantics, rule.id

    def require(self, weights: dict[str, tuple[str, h5py.Dataset]], variable: str,
                layer: Layer) -> tuple[str, h5py.Dataset]:
        for name in variable.split("|"):
            if name in weights:
                return weights[name]
        raise BadInputError(f"layer {layer.name!r} ({layer.source_class}) has no {variable!r} weight; "
                            f"found {sorted(weights) or 'none'}",
                            fix="The file does not match its model_config; export it again")

    def tensor(self, name: str, key: str, dataset: h5py.Dataset, src: str, dst: str, semantics: str,
               rule: str | None, extra: tuple = (), pattern_after_take: bool = False) -> Tensor:
        """A lazy canonical tensor over ``dataset`` stored in pattern ``src``."""
        check_dataset(dataset, self.path)
        target_semantics = CORRELATION if semantics != NO_SEMANTICS else NO_SEMANTICS
        relayout = Relayout(Layout(src, semantics), Layout(dst, target_semantics))
        steps = (extra[:1] + (relayout,) + extra[1:]) if pattern_after_take else ((relayout,) + extra)
        return Tensor(name, tuple(dataset.shape), hdf5.dataset_dtype(dataset), Layout(dst, target_semantics),
                      Provenance(key, src, semantics, rule), hdf5.dataset_reader(dataset), steps)

    def set_input_shape(self, model: Model, decls: list[KerasLayerDecl], default_format: str) -> None:
        if self.config is None:
            return
        shape = input_shape(decls, self.config)
        if shape is None or any(n is None for n in shape[:-1]):
            shape = list(self.options.input_shape) if self.options.input_shape else shape
        if shape is None:
            return
        spatial = any(layer.kind in SPATIAL_KINDS for layer in model.layers)  # as the canonical module reads it
        if spatial and len(shape) >= 2 and default_format == "channels_last":
            shape = [shape[-1]] + shape[:-1]
        first = model.layers[0] if model.layers else None
        if first is not None and first.kind == "input":
            first.output_shape = tuple(shape)
        elif first is not None:
            model.layers.insert(0, Layer("input", "input", {}, {}, [], "InputLayer", None, tuple(shape)))
            if not first.inputs:
                first.inputs = ["input"]

    def map_format(self, model: Model, flatten: Layer, memo: dict[int, str]) -> str:
        """The data format of the map reaching ``flatten``: that of the nearest layer before it that has one.
        ``memo`` (kept over one pass) remembers the answer for every layer walked, so a pass stays linear."""
        default = model.source.details.get("data_format", "channels_last")
        names = model.input_names(flatten)
        current = model.find(names[0]) if names else None
        walked: dict[int, None] = {}
        found = default
        while current is not None and id(current) not in walked:  # a cycle was refused on reading
            if id(current) in memo:
                found = memo[id(current)]
                break
            walked[id(current)] = None
            if current.kind in ("conv", "conv_transpose", "depthwise", "separable", "pool", "padding",
                                "cropping", "upsampling"):
                found = current.attrs.get("data_format") or default
                break
            names = model.input_names(current)
            current = model.find(names[0]) if names else None
        for key in walked:
            memo[key] = found
        return found

    def permute_dense_after_flatten(self, model: Model) -> None:
        """Dense rows after a Flatten of a spatial map: source flatten order -> canonical C, (D,) H, W."""
        flattens: dict[int, Layer | None] = {}
        formats: dict[int, str] = {}
        for layer in model.layers:
            if layer.kind != "dense":
                continue
            hidden = hiding_layer(model, layer, flattens)
            if hidden:
                layer.attrs["rows_as_stored"] = True
                model.warn(f"layer {layer.name!r}: Dense after a Flatten of the map that layer {hidden!r} "
                           "permutes or reshapes: its rows were kept in the source's order, right for a model "
                           "that runs that layer on the channels-last map as Keras does (weightport's torch "
                           "module and ONNX do); a channels-first model must reorder them itself")
                continue
            shape = flattened_map_shape(model, layer, flattens)
            if shape is False:
                continue
            if shape is None:
                layer.attrs["rows_as_stored"] = True  # a Keras target keeps them as they are, silently
                model.warn(f"layer {layer.name!r}: Dense after Flatten, but the model records no input shape, "
                           "so the flattened map's shape is unknown; its rows were kept in the source's order "
                           "(pass --input-shape with the model's input without the batch axis, e.g. 28,28,1)")
                continue
            flatten = feeding_flatten(model, layer, flattens)
            order = keras_flatten_order(self.version, self.map_format(model, flatten, formats),
                                        flatten.attrs.get("flatten_data_format"))
            flatten.attrs["flatten_order"] = order
            if order == "chw":
                continue
            channels_last, channels_first, known = flatten_patterns(shape)
            tensor = layer.tensors["weight"]
            src = f"{channels_last} o"
            tensor.transforms = (Relayout(Layout(src), Layout(f"o {channels_first}"), known),)
            tensor.provenance = Provenance(tensor.provenance.source_key, src, NO_SEMANTICS,
                                           "Flatten of a channels-last map: rows reordered H,W,C -> C,H,W")


def refuse_or_keep_unknown(model: Model, unknown: list[Layer], keep: bool, weights_only: bool) -> None:
    """Refuse a model holding layers weightport cannot map, naming each; with ``--keep-unknown`` keep
    their tensors unchanged and say so in a warning (which the output's metadata carries)."""
    if not unknown:
        return
    listed = ", ".join(f"{layer.name!r} ({layer.source_class}: {', '.join(layer.tensors)})" for layer in unknown)
    if not keep:
        what = "weights-only file: the kind of these layers cannot be told from their names or weights" \
            if weights_only and all(layer.source_class == "Unknown" for layer in unknown) else \
            "layers holding weights weightport cannot map (custom layers, or Keras layers it does not port yet)"
        raise UnsupportedError(f"{what}: {listed}",
                               fix="Pass {opt:keep_unknown=True} to copy their tensors unchanged under their own names"
                                   + (", or {opt:layer_kinds=MAP.json} (layer name -> Keras class), or convert the "
                                      "file saved with model.save (it carries the model config)" if weights_only
                                      else ""))
    model.warn(f"layers weightport cannot map, their tensors kept unchanged under their own names "
               f"(--keep-unknown): {listed}; the target model must define these layers itself")


def hiding_layer(model: Model, dense: Layer, memo: dict[int, Layer | None]) -> str | None:
    """The Permute/Reshape hiding the map layout of the Flatten that feeds ``dense``, if any."""
    flatten = feeding_flatten(model, dense, memo)
    return flatten.attrs.get("hidden_by") if flatten is not None else None


class JoinedGates:
    """Keras 1 per-gate datasets (``W_i``, ``W_f``, ...) seen as one dataset of gate blocks on the last axis."""

    def __init__(self, parts: list[h5py.Dataset]) -> None:
        self.parts = parts
        first = parts[0]
        self.shape = first.shape[:-1] + (first.shape[-1] * len(parts),)
        self.ndim = first.ndim
        self.dtype = first.dtype
        self.name = "+".join(p.name for p in parts)
        self.file = first.file

    def __getitem__(self, index):
        return concat_blocks([p[()] for p in self.parts], axis=-1)[index]


def join_keras1_gates(weights: dict[str, tuple[str, h5py.Dataset]], gates: str) -> dict[str, tuple[str, Any]]:
    """Keras 1 LSTM (12 arrays) / GRU (9 arrays) -> Keras 2 style kernel, recurrent_kernel, bias in ``gates`` order.

    Keras 1 names gate c of the LSTM ``c`` and the GRU candidate ``h``, as Keras 2 does.
    """
    if "kernel" in weights or f"W_{gates[0]}" not in weights:
        return weights
    joined = dict(weights)
    for variable, prefix in (("kernel", "W"), ("recurrent_kernel", "U"), ("bias", "b")):
        names = [f"{prefix}_{gate}" for gate in gates]
        if all(n in weights for n in names):
            parts = [weights[n] for n in names]
            joined[variable] = ("+".join(key for key, _ in parts), JoinedGates([d for _, d in parts]))
    return joined


def short_name(layer: str, weight_name: str, keras1: bool = True) -> str:
    """``conv2d_1/kernel:0`` -> ``kernel``; Keras 1 ``convolution2d_1_W`` -> ``kernel`` (only in a Keras 1
    file: a Keras 2 custom layer's ``attention_W`` stays ``attention_W``).

    A Bidirectional wrapper's backward weights get the prefix ``backward/``.
    """
    parts = weight_name.split("/")
    if any(part.startswith("backward_") for part in parts[:-1]):
        return "backward/" + short_name(layer, parts[-1], keras1)
    last = parts[-1].split(":")[0]
    if keras1 and last.startswith(layer + "_"):
        suffix = last[len(layer) + 1:]
        return KERAS1_SUFFIXES.get(suffix, suffix)
    return last


def guess_class(name: str) -> str:
    """A layer class from a default layer name (``conv2d_transpose_3`` -> ``Conv2DTranspose``) for files without a config."""
    base = name.rstrip("0123456789").rstrip("_").lower().replace("_", "")
    for cls in list(CONV_KINDS) + list(WEIGHTED_SIMPLE) + list(WEIGHTLESS):
        if cls.lower() == base:
            return cls
    return "Unknown"


def check_dataset(dataset: h5py.Dataset, path: str) -> None:
    if dataset.dtype.kind not in "fiub" and not hdf5.is_bfloat16_dataset(dataset):
        raise BadInputError(f"dataset {dataset.name} has dtype {dataset.dtype}, not a numeric array", path=path,
                            fix="Only numeric weight arrays can be converted")


def transpose_pads(attrs: dict[str, Any]) -> list[list[int]]:
    """Keras Conv*Transpose 'valid'/'same' padding as the explicit per-side pads of the equivalent PyTorch layer."""
    pads = []
    for k, s, d in zip(attrs["kernel_size"], attrs["strides"], attrs["dilations"]):
        if attrs["padding"] == "valid":
            pads.append([0, 0])
        else:
            total = max((k - 1) * d + 1 - s, 0)
            pads.append([total // 2, total - total // 2])
    return pads


def weightless_attrs(kind: str, cls: str, config: dict[str, Any], default_format: str) -> dict[str, Any]:
    """Canonical attributes of a weightless Keras layer."""
    rank = int(cls[-2]) if cls[-2:-1].isdigit() and cls.endswith("D") else None
    attrs: dict[str, Any] = {"data_format": data_format(config, default_format)}
    if kind == "pool" and rank:
        size = as_tuple(config.get("pool_size", config.get("pool_length", 2)), rank)
        strides = config.get("strides", config.get("stride")) or size
        attrs.update(rank=rank, kernel_size=size, strides=as_tuple(strides, rank),
                     padding=config.get("padding", config.get("border_mode", "valid")),
                     mode="max" if "Max" in cls else "avg")
    elif kind == "global_pool":
        attrs.update(mode="max" if "Max" in cls else "avg", keepdims=bool(config.get("keepdims", False)))
    elif kind == "padding" and rank:
        attrs["pads"] = side_pairs(config.get("padding", 1), rank)
    elif kind == "cropping" and rank:
        attrs["crops"] = side_pairs(config.get("cropping", 0), rank)
    elif kind == "upsampling" and rank:
        attrs["size"] = as_tuple(config.get("size", config.get("length", 2)), rank)
        attrs["interpolation"] = config.get("interpolation", "nearest")
    elif kind == "flatten":
        attrs["flatten_data_format"] = config.get("data_format")
    elif kind == "activation":
        attrs["activation"] = config.get("activation", cls.lower())
    elif kind == "concat":
        axis = config.get("axis", config.get("concat_axis", -1))
        attrs["source_axis"] = axis
        channel_axis = -1 if attrs["data_format"] == "channels_last" else 1
        if axis == channel_axis:
            attrs["axis"] = 0
    elif kind == "reshape":
        attrs["target_shape"] = config.get("target_shape")
    elif kind == "permute":
        attrs["dims"] = config.get("dims")
    elif kind == "repeat_vector":
        attrs["n"] = config.get("n")
    elif kind == "dot":
        attrs.update(axes=config.get("axes", -1), normalize=bool(config.get("normalize", False)))
    elif kind == "dropout":
        attrs["rate"] = config.get("rate", config.get("p"))
    elif kind == "not_equal":  # Keras 3's mask op: NotEqual(indices, value)
        literals = config.get("_call_literals") or []
        attrs["value"] = literals[0] if len(literals) == 1 else None
    return attrs


def side_pairs(value: Any, rank: int) -> list[list[int]]:
    """Keras padding/cropping argument -> ``[[before, after], ...]`` per spatial axis."""
    if isinstance(value, int):
        return [[value, value] for _ in range(rank)]
    pairs = []
    for item in value:
        pairs.append([int(item), int(item)] if isinstance(item, int) else [int(item[0]), int(item[1])])
    if rank == 1 and len(pairs) == 2 and all(p[0] == p[1] for p in pairs) and not isinstance(value[0], (list, tuple)):
        return [[int(value[0]), int(value[1])]]
    return pairs
