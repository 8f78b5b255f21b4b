"""Theano/Lasagne target (``--to theano``): a pickle of plain numpy arrays in Lasagne order and layout,
plus a JSON spec describing each array (the same spec format the Theano reader takes).

Conv kernels are written ``(out, in/groups, rows, cols)`` flipped for Theano's default
``conv2d(filter_flip=True)`` / Lasagne ``Conv2DLayer`` (``--target-semantics correlation`` for
``Conv2DDNNLayer`` or ``filter_flip=False``); dense ``W`` as ``(num_inputs, num_units)``; batch norm as
Lasagne's ``beta, gamma, mean, inv_std`` (``inv_std = 1/sqrt(var + eps)``); a transposed convolution as
``TransposedConv2DLayer``'s ``W`` ``(in, out, rows, cols)``, flipped for its default ``flip_filters=False``
(the gradient of Theano's ``conv2d(filter_flip=True)``; ``--target-semantics correlation`` for
``flip_filters=True``) with its ``crop`` in the spec; a PReLU as ``ParametricRectifierLayer``'s ``alpha``, one
slope per channel ``(C,)`` or per element ``(C, H, W)`` (``shared_axes=0``). The pickle holds only
lists and numpy arrays (protocol 2, arrays named through ``numpy.core`` so that numpy 1.x, Python 2's
included, loads them; fixtures/theano_target holds a real Theano 1.0.5 run of a written pickle).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace

from weightport.core.dtypes import widened
from weightport.core.atomic import atomic_path, check_can_write
from weightport.core.describe import jsonable
from weightport.core.errors import UnsupportedError
from weightport.core.layout import CONVOLUTION, Layout, NO_SEMANTICS
from weightport.core.steps import Relayout
from weightport.core.model import Layer, Model
from weightport.core.options import WriteOptions
from weightport.core.plan import Plan, PlannedTensor, canonical_plan, note_bfloat16_widened

NAME = "theano"
DESCRIPTION = "Theano/Lasagne pickle of numpy arrays with a JSON spec"
EXTENSIONS = (".pkl", ".pickle")
LASAGNE_BATCHNORM = (("bias", "beta"), ("weight", "gamma"), ("running_mean", "mean"), ("running_var", "inv_std"))


def sniff(path: str) -> bool:
    return False  # read back by weightport.formats.theano.reader


def read(path: str, options) -> Model:
    raise NotImplementedError("Theano pickles are read by weightport.formats.theano.reader")


def theano_plan(model: Model, options: WriteOptions) -> Plan:
    """Lasagne order, names ``<layer>.<param>`` and layouts, kernels in the target semantics."""
    from weightport.formats.theano.reader import VarianceToInvStd
    semantics = options.target_semantics or CONVOLUTION
    canonical = {(p.layer.name, p.param): p for p in canonical_plan(model, options, "theano").tensors}
    planned: list[PlannedTensor] = []
    for layer in model.layers:
        if not layer.tensors:
            continue
        if layer.kind in ("conv", "depthwise", "conv_transpose"):
            if layer.kind == "conv_transpose":
                lasagne_transposed_conv(layer)
            weight = canonical[(layer.name, "weight")]
            target = Layout(weight.layout.pattern, semantics)
            planned.append(replace(weight, steps=(Relayout(weight.layout, target),), layout=target,
                                   key=f"{layer.name}.W"))
            if (layer.name, "bias") in canonical:
                planned.append(renamed(canonical[(layer.name, "bias")], f"{layer.name}.b"))
        elif layer.kind == "dense":
            weight = canonical[(layer.name, "weight")]
            planned.append(replace(weight, steps=(Relayout(Layout("o i"), Layout("i o")),), layout=Layout("i o"),
                                   key=f"{layer.name}.W"))
            if (layer.name, "bias") in canonical:
                planned.append(renamed(canonical[(layer.name, "bias")], f"{layer.name}.b"))
        elif layer.kind == "prelu":
            planned.append(renamed(canonical[(layer.name, "weight")], f"{layer.name}.alpha"))
        elif layer.kind == "batchnorm":
            for param, lasagne in LASAGNE_BATCHNORM:
                item = renamed(canonical[(layer.name, param)], f"{layer.name}.{lasagne}")
                if lasagne == "inv_std":
                    item = replace(item, steps=(VarianceToInvStd(float(layer.attrs.get("epsilon", 1e-4))),))
                planned.append(item)
        else:
            raise UnsupportedError(f"layer {layer.name!r} ({layer.kind}) has no Lasagne array layout here",
                                   fix="Supported for the theano target: conv, depthwise, conv_transpose, dense, "
                                       "batchnorm, prelu")
    return Plan("theano", planned, list(model.warnings))


def lasagne_transposed_conv(layer: Layer) -> None:
    """Refuse a transposed convolution Lasagne's ``TransposedConv2DLayer`` cannot compute: it crops the same
    amount on both sides of an axis (``crop``), has no groups, no dilation and no output padding."""
    a = layer.attrs
    pads = a.get("pads") or [[0, 0]] * a.get("rank", 2)
    problems = ([f"uneven crops {pads}"] if any(before != after for before, after in pads) else []) + \
        ([f"groups={a['groups']}"] if a.get("groups", 1) != 1 else []) + \
        ([f"dilations {list(a['dilations'])}"] if any(d != 1 for d in a.get("dilations") or ()) else []) + \
        ([f"output_padding {list(a['output_padding'])}"] if any(a.get("output_padding") or ()) else []) + \
        ([f"spatial rank {a.get('rank')}"] if a.get("rank", 2) not in (2, 3) else [])
    if problems:
        raise UnsupportedError(f"layer {layer.name!r} is a transposed convolution with {', '.join(problems)}, which "
                               "Lasagne's TransposedConv2DLayer/TransposedConv3DLayer (one crop per axis) cannot "
                               "compute", fix="Convert to the torch, onnx or npz target")


class LegacyNumpyPickler(pickle._Pickler):
    """Pickles arrays as every numpy loads them: numpy 2 names its array reconstructor
    ``numpy._core.multiarray._reconstruct``, which numpy < 1.26 (every Theano-era install, Python 2's
    included) cannot import; this writes ``numpy.core.multiarray._reconstruct``, which numpy 1.x
    defines and numpy 2 still resolves to the same function."""

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name)
        if not module.startswith("numpy._core."):
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"numpy.core.{module[len('numpy._core.'):]}\n{name}\n".encode("ascii"))
        self.memoize(obj)


def renamed(item: PlannedTensor, key: str) -> PlannedTensor:
    return replace(item, key=key)


def spec_for(model: Model, plan: Plan) -> dict:
    layers = []
    for layer in model.layers:
        items = [p for p in plan.tensors if p.layer is layer]
        entry = {"name": layer.name, "kind": layer.kind if layer.kind != "depthwise" else "conv"}
        if items:
            entry["params"] = {p.key.rsplit(".", 1)[1]: ("inv_std" if p.key.endswith("inv_std") else p.param)
                               for p in items}
            kernel = [p for p in items if p.layout.semantics != NO_SEMANTICS]
            if layer.kind == "conv_transpose":
                entry["crop"] = [before for before, _ in layer.attrs.get("pads") or [[0, 0]] * layer.attrs.get("rank", 2)]
            if kernel:
                a = layer.attrs
                entry.update(layout=kernel[0].layout.pattern, semantics=kernel[0].layout.semantics,
                             strides=list(a.get("strides", ())), dilations=list(a.get("dilations", ())),
                             pads=a.get("pads") or [[0, 0]] * a.get("rank", 2), groups=a.get("groups", 1))
            elif layer.kind == "dense":
                entry["layout"] = "i o"
            elif layer.kind == "prelu":  # ParametricRectifierLayer: alpha over the axes not shared, channels first
                entry["layout"] = items[0].layout.pattern
            if layer.kind == "batchnorm":
                entry["epsilon"] = layer.attrs.get("epsilon", 1e-4)
        if not items:
            entry.update({k: v for k, v in jsonable(layer.attrs).items() if k not in ("name", "kind")})
        if layer.attrs.get("activation") not in (None, "linear"):
            entry["activation"] = layer.attrs["activation"]
        if layer.kind not in ("input",):
            layers.append(entry)
    first = model.layers[0] if model.layers else None
    return {"format": "weightport theano", "arrays": [p.key for p in plan.tensors], "layers": layers,
            "input_shape": list(first.output_shape) if first is not None and first.kind == "input"
            and first.output_shape else None}


def companion_outputs(path: str) -> list[str]:
    """The spec written beside ``path``: ``<stem>.spec.json``."""
    return [os.path.join(os.path.dirname(path) or ".", os.path.basename(path).split(".")[0] + ".spec.json")]


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """``path`` (pickle of a list of arrays) and ``<stem>.spec.json`` beside it, both atomically."""
    plan = theano_plan(model, options)
    spec_path, = companion_outputs(path)
    check_can_write(spec_path, options.force)
    arrays = [widened(item.load()) for item in plan.tensors]
    note_bfloat16_widened(plan, "Theano")
    with atomic_path(path, options.force) as temporary:
        with open(temporary, "wb") as handle:
            LegacyNumpyPickler(handle, protocol=2).dump(arrays)
        with atomic_path(spec_path, options.force) as spec_temporary:
            with open(spec_temporary, "w", encoding="utf-8") as handle:
                json.dump(spec_for(model, plan), handle, indent=1)
    return plan.warnings
