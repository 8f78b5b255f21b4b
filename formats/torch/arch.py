"""``--arch module.py:Class``: the user's own torch module gives a state dict its architecture.

A state dict is a flat mapping of keys to tensors; whether ``conv1.weight`` is a Conv2d kernel (and so
needs an HWIO transpose for Keras) is written nowhere in it.  ``--arch`` names the module the weights
belong to: ``module.py:Class`` (built with no arguments) or ``module.py:factory`` (a function returning
the module).  That file is **imported**: it is the user's code, named by the user on the command line,
exactly like ``--strict-against``.  Nothing named inside a data file is ever imported.

Then:

1. the module is built and the state dict loaded into it with ``strict=True`` (every key, every shape);
2. each parameter's layer gets its kind and attributes from the submodule that owns it
   (:data:`KINDS`: ``nn.Conv1d/2d/3d``, ``ConvTranspose``, ``Linear``, ``BatchNorm``, ``LSTM``/``GRU``,
   ``Embedding``, ``PReLU``; any other module keeps its tensors as stored, kind ``other``);
3. with ``--input-shape`` the module is traced with ``torch.fx`` and run once on a seeded input of that
   shape (``ShapeProp``): the layers are put in execution order, each with its inputs and per-sample
   output shape (channels first), and every ``flatten``/``view``/``permute`` becomes a layer, so a
   Linear after a conv knows the map it reads.  Without a trace, a module holding both a Linear and a
   conv is refused (the feature order the Linear reads cannot be known); a flatten of a permuted map is
   recorded as unknowable and targets that reorder Dense rows refuse it (:func:`unknown_flatten`).

Tensors keep their exact keys (``layer.param``, top-level parameters under the root layer ``""``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from weightport.core.dtypes import numpy_to_tensor
from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.layout import CANONICAL_PATTERNS, CORRELATION, Layout, NO_SEMANTICS, conv_role
from weightport.core.model import Layer, Model, Tensor
from weightport.core.options import ReadOptions
from weightport.formats.torch.pt_reader import import_torch
from weightport.formats.torch.strict import load_module_class
from weightport.formats.torch.requirements import (ARCHITECTURE_LESS, STACKED_RNN_TARGETS, UNKNOWN_FLATTEN,  # noqa: F401
                                                   require_architecture, unknown_flatten)
from weightport.formats.torch.trace import trace_into



def pairs(value: Any, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * rank


def conv_attrs(module: Any, kind: str) -> dict[str, Any]:
    """Canonical attributes of ``nn.ConvNd``/``nn.ConvTransposeNd``: explicit per-side pads."""
    rank = len(module.kernel_size)
    padding = module.padding if isinstance(module.padding, str) else [[p, p] for p in pairs(module.padding, rank)]
    attrs = {"rank": rank, "kernel_size": tuple(module.kernel_size), "strides": tuple(module.stride),
             "dilations": tuple(module.dilation), "padding": padding, "groups": module.groups,
             "in_channels": module.in_channels, "out_channels": module.out_channels,
             "data_format": "channels_first", "use_bias": module.bias is not None}
    if kind == "conv_transpose":
        attrs["output_padding"] = tuple(module.output_padding)
    if module.padding_mode != "zeros":
        attrs["padding_mode"] = module.padding_mode
    return attrs


def rnn_attrs(module: Any, kind: str) -> dict[str, Any]:
    """A torch LSTM/GRU's attributes; ``num_layers`` > 1 is a stack (tensors ``*_l0``, ``*_l1``, ...), each
    layer reading the one below (both directions concatenated when bidirectional)."""
    return {"units": module.hidden_size, "return_sequences": True, "go_backwards": False,
            "bidirectional": module.bidirectional, "batch_first": module.batch_first,
            "reset_after": True, "activation": "tanh", "recurrent_activation": "sigmoid",
            **({"num_layers": module.num_layers} if module.num_layers > 1 else {})}


# nn class name -> (canonical kind, attributes, {param: canonical pattern or conv role})
KINDS: dict[str, tuple[str, Callable[[Any, str], dict[str, Any]]]] = {
    **{f"Conv{n}d": ("conv", conv_attrs) for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": ("conv_transpose", conv_attrs) for n in (1, 2, 3)},
    "Linear": ("dense", lambda m, k: {"units": m.out_features, "in_features": m.in_features,
                                      "use_bias": m.bias is not None}),
    **{f"BatchNorm{n}d": ("batchnorm", lambda m, k: {"epsilon": m.eps, "momentum": m.momentum,
                                                     "num_features": m.num_features}) for n in (1, 2, 3)},
    "LSTM": ("lstm", rnn_attrs),
    "GRU": ("gru", rnn_attrs),
    "Embedding": ("embedding", lambda m, k: {"input_dim": m.num_embeddings, "output_dim": m.embedding_dim}),
    "PReLU": ("prelu", lambda m, k: {"num_parameters": m.num_parameters}),
}


def canonical_layouts(layer: Layer) -> None:
    """Name each stored tensor's axes (the canonical PyTorch layout): conv kernels ``o i h w`` (transposed
    ``i o h w``) with correlation semantics (torch.nn convolutions correlate), dense ``o i``, vectors ``o``."""
    kind = layer.kind
    for param, tensor in layer.tensors.items():
        if kind in ("conv", "conv_transpose") and param == "weight":
            pattern, semantics = CANONICAL_PATTERNS[conv_role(kind, layer.attrs["rank"])], CORRELATION
        elif tensor.layout.pattern.count(" ") == 1 and kind in ("dense", "lstm", "gru"):
            pattern, semantics = "o i", NO_SEMANTICS
        elif kind == "prelu":
            pattern, semantics = " ".join(["c"] + [f"s{k}" for k in range(len(tensor.shape) - 1)]), NO_SEMANTICS
        elif kind == "embedding":
            pattern, semantics = "n e", NO_SEMANTICS
        elif len(tensor.shape) == 1:
            pattern, semantics = "o", NO_SEMANTICS
        else:
            continue
        relabel(tensor, pattern, semantics)


def relabel(tensor: Tensor, pattern: str, semantics: str) -> None:
    """The stored tensor's axes named ``pattern`` (no data moves: the stored layout is the canonical one)."""
    tensor.layout = Layout(pattern, semantics)
    rule = "torch.nn convolutions compute cross-correlation" if semantics != NO_SEMANTICS else None
    tensor.provenance = type(tensor.provenance)(tensor.provenance.source_key, pattern, semantics, rule)


def build_module(spec: str, torch: Any, meta: bool = False) -> Any:
    """The user's module: ``Class()`` or ``factory()``, in eval mode.

    With ``meta``, the module is first built on torch's ``meta`` device: its parameters have shapes and
    dtypes but no storage, so a module of tens of GB costs no memory (only the layer kinds and shapes are
    read from it); a constructor that cannot run there (one that computes with its tensors) is built as usual.
    """
    made = load_module_class(spec, "arch")
    if meta:
        try:
            with torch.device("meta"):
                module = made()
            if isinstance(module, torch.nn.Module):
                return module.eval()
        except Exception:  # built again below, on the CPU, where its own errors are reported
            pass
    try:
        module = made()
    except Exception as error:  # the user's constructor: any failure is theirs to fix
        raise UsageError(f"{{opt:arch}} {spec}: calling {getattr(made, '__name__', spec)}() failed "
                         f"({type(error).__name__}: {str(error)[:160]})",
                         fix="Give a class whose constructor needs no arguments, or a factory function") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{{opt:arch}} {spec} gave a {type(module).__name__}, not a torch.nn.Module",
                         fix="Name a torch.nn.Module subclass or a function returning one")
    return module.eval()


def load_strict(module: Any, model: Model, torch: Any, spec: str) -> None:
    """``module.load_state_dict(state, strict=True)``: every key and shape must match exactly.  A module on
    the ``meta`` device is checked with ``meta`` tensors of the source's shapes (torch's own check and
    messages; nothing is read or copied) and keeps no weights: :func:`run_user_module` gives it some."""
    if is_meta(module):
        state = {key: torch.empty(tuple(tensor.shape), device="meta") for key, _, tensor in model.state_keys()}
    else:
        state = {key: numpy_to_tensor(torch, np.array(tensor.load(), copy=True)) for key, _, tensor in model.state_keys()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise UsageError(f"the weights do not fit {{opt:arch}} {spec}: {'; '.join(lines)[:600]}",
                         fix="Name the module these weights were saved from (or choose the right checkpoint entry with {opt:key})"
                         ) from None


def assign_kinds(module: Any, model: Model) -> None:
    """Each layer holding parameters gets the kind and attributes of the submodule that owns them."""
    for name, sub in module.named_modules():
        layer = model.find(name)
        cls = type(sub).__name__
        if layer is None or cls not in KINDS:
            if layer is not None and layer.tensors:
                layer.source_class = cls
            continue
        kind, attrs = KINDS[cls]
        layer.kind, layer.attrs, layer.source_class = kind, attrs(sub, kind), f"torch.nn.{cls}"
        if kind in ("lstm", "gru") and getattr(sub, "proj_size", 0):
            layer.kind = "other"
            model.warn(f"layer {name!r}: torch.nn.{cls} with proj_size={sub.proj_size}: kept as stored (kind "
                       "other); targets that need layer kinds refuse it")
            continue
        canonical_layouts(layer)


def needs_trace(model: Model) -> bool:
    kinds = {layer.kind for layer in model.layers}
    return "dense" in kinds and bool(kinds & {"conv", "conv_transpose"})


def apply_arch(model: Model, options: ReadOptions, path: str) -> Model:
    """Give ``model`` (a state dict read from ``path``) the architecture of ``options.arch``."""
    if model.source.format not in ARCHITECTURE_LESS or model.has_architecture:
        raise UsageError(f"{{opt:arch}} gives a PyTorch state dict its architecture; this {model.source.format} file "
                         "already carries one", path=path, fix="Drop {opt:arch}")
    torch = import_torch()
    # without --input-shape nothing runs the module while converting: built on the meta device, no memory
    module = build_module(options.arch or "", torch, meta=options.input_shape is None)
    load_strict(module, model, torch, options.arch or "")
    assign_kinds(module, model)
    if options.input_shape is not None:
        trace_into(model, module, options.input_shape, torch, options.arch or "")
    elif needs_trace(model):
        raise UsageError(f"{{opt:arch}} {options.arch}: the module has a Linear and a convolution, and the order in "
                         "which the Linear reads the conv's features is only known by running the module",
                         path=path, fix="Give {opt:input_shape=C,H,W} (an example input) so the module is traced")
    model.has_architecture = True
    model.source.details["arch"] = options.arch
    model.arch_module = module  # type: ignore[attr-defined]  (validate and --to onnx run it)
    return model


def is_meta(module: Any) -> bool:
    """Whether ``module``'s parameters live on torch's ``meta`` device (shapes only, no storage)."""
    return any(tensor.is_meta for tensor in module.state_dict().values())


def user_module(model: Model) -> Any:
    """The ``--arch`` module ``model`` was read with (holding the source's weights), or None."""
    return getattr(model, "arch_module", None)


def run_user_module(model: Model, state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The ``--arch`` module holding ``state`` (``load_state_dict(strict=True)``) run on ``x``; its first
    output when it returns several."""
    torch = import_torch()
    return first_output(module_holding(model, state, torch), x, torch)


def module_holding(model: Model, state: dict[str, np.ndarray], torch: Any) -> Any:
    """A copy of the ``--arch`` module holding ``state`` (``load_state_dict(strict=True)``)."""
    import copy
    module = copy.deepcopy(user_module(model))
    module.load_state_dict({key: torch.from_numpy(np.array(value, copy=True)) for key, value in state.items()},
                           strict=True, assign=is_meta(module))  # a meta module takes the tensors themselves
    return module


def run_source_module(model: Model, x: np.ndarray) -> np.ndarray:
    """The source run by its own framework: the ``--arch`` module as it was loaded with the file's tensors
    (torch.load(weights_only=True) or safetensors, every key as stored) run on ``x``; its first output.
    NotImplementedError when the file was read without ``--arch`` (a state dict alone cannot run)."""
    module = user_module(model)
    if module is None:
        raise NotImplementedError("the file was read without the module that runs it (the arch option)")
    if is_meta(module):
        raise NotImplementedError("its module was built without tensors (no input shape was given to trace it)")
    return first_output(module, x, import_torch())


def module_outputs(module: Any, x: np.ndarray, torch: Any) -> list[tuple[str, np.ndarray]]:
    """(name, output) of every submodule of ``module`` in the order its forward pass finished them (a
    container after its children); the first output of a module that returns several."""
    outputs: list[tuple[str, np.ndarray]] = []

    def record(name: str) -> Callable:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            while isinstance(output, (tuple, list)) and output:
                output = output[0]
            if isinstance(output, torch.Tensor):
                outputs.append((name, output.detach().numpy().copy()))
        return hook
    handles = [sub.register_forward_hook(record(name)) for name, sub in module.named_modules() if name]
    try:
        first_output(module, x, torch)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def first_diverging_module(model: Model, state: dict[str, np.ndarray], x: np.ndarray,
                           differs: Callable[[np.ndarray, np.ndarray], bool]) -> str | None:
    """The first submodule, in the order the forward pass runs them, whose output ``differs`` between the
    ``--arch`` module holding the source's tensors and a copy holding ``state`` (None when none does)."""
    torch = import_torch()
    if is_meta(user_module(model)):  # built without the source's tensors: nothing to compare with
        return None
    theirs = dict(module_outputs(user_module(model), x, torch))
    for name, ours in module_outputs(module_holding(model, state, torch), x, torch):
        if name in theirs and ours.shape == theirs[name].shape and differs(ours, theirs[name]):
            return name
    return None


def first_output(module: Any, x: np.ndarray, torch: Any) -> np.ndarray:
    """``module`` run on ``x`` without gradients; its first output when it returns several."""
    with torch.no_grad():
        result = module(torch.from_numpy(np.ascontiguousarray(x)))
    return (result[0] if isinstance(result, (tuple, list)) else result).numpy()
