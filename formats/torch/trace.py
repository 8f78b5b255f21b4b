"""The layer order, inputs and map shapes of the user's ``--arch`` module, from one ``torch.fx`` trace.

``torch.fx.symbolic_trace`` records every submodule call and tensor operation of ``forward``;
``ShapeProp`` runs the graph once on a seeded random input of ``--input-shape`` and records each value's
shape.  Each node becomes a canonical layer (:func:`layer_for`): a called submodule keeps its name (so
its tensors' keys are unchanged), other operations get their fx node name.  Shapes are per sample, in
the module's own (channels-first) order.

A ``flatten``/``view``/``reshape`` to ``(N, features)`` of a map is a ``flatten`` layer whose input
is that map.  When the map reached it through a ``permute``/``transpose`` the feature order is not
channels-first; the Dense layers reading it are recorded in ``SourceInfo.details`` (``UNKNOWN_FLATTEN``)
and targets that reorder Dense rows refuse them.
"""

from __future__ import annotations

from typing import Any

from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.model import Layer, LayerList, Model
from weightport.formats.torch.requirements import UNKNOWN_FLATTEN

TRACE_SEED = 0
WEIGHTLESS = {  # nn class name -> canonical weightless kind (when the trace calls the module)
    **dict.fromkeys(("ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softmax",
                     "LogSoftmax", "Hardswish", "Hardsigmoid", "Mish", "Softplus"), "activation"),
    **dict.fromkeys((f"{p}Pool{n}d" for p in ("Max", "Avg", "LPPool") for n in (1, 2, 3)), "pool"),
    **dict.fromkeys((f"AdaptiveAvgPool{n}d" for n in (1, 2, 3)), "global_pool"),
    **dict.fromkeys(("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity"), "dropout"),
    "Flatten": "flatten",
}
FUNCTIONS = {  # torch function or Tensor method name -> canonical weightless kind
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "softmax", "log_softmax", "gelu", "silu", "leaky_relu",
                     "elu", "hardswish", "hardsigmoid"), "activation"),
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"), "pool"),
    **dict.fromkeys(("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"), "global_pool"),
    **dict.fromkeys(("dropout", "contiguous"), "dropout"),
    **dict.fromkeys(("add", "iadd", "__add__"), "add"),
    **dict.fromkeys(("mul", "__mul__"), "multiply"),
    **dict.fromkeys(("cat", "concat"), "concat"),
    **dict.fromkeys(("permute", "transpose", "t"), "permute"),
    **dict.fromkeys(("flatten", "view", "reshape"), "reshape"),  # a flatten when it makes (N, features)
}


def trace_into(model: Model, module: Any, input_shape: tuple[int, ...], torch: Any, spec: str) -> None:
    """Reorder ``model.layers`` into the module's execution order and add its weightless operations."""
    graph = traced(module, input_shape, torch, spec)
    modules = dict(module.named_modules())
    names: dict[Any, str] = {}  # fx node -> canonical layer name
    ordered: list[Layer] = []
    for node in graph.nodes:
        layer = layer_for(node, model, modules, names, spec)
        if layer is None:
            continue
        if any(layer is seen for seen in ordered):
            raise UnsupportedError(f"{{opt:arch}} {spec}: submodule {layer.name!r} is called more than once; its "
                                   "layers cannot be listed once each", fix="Convert to the torch or npz target")
        layer.inputs = [names[arg] for arg in node.all_input_nodes if arg in names]
        layer.output_shape = per_sample_shape(node)
        names[node] = layer.name
        ordered.append(layer)
    unused = [layer for layer in model.layers if not any(layer is seen for seen in ordered)]
    for layer in unused:
        if layer.tensors and layer.name:
            model.warn(f"layer {layer.name!r} holds tensors but is not called in forward; kept as stored")
    model.layers = LayerList(ordered + unused)
    mark_flattens(model)


def traced(module: Any, input_shape: tuple[int, ...], torch: Any, spec: str) -> Any:
    """The module's fx graph with every node's shape (``node.meta['tensor_meta']``)."""
    from torch.fx.passes.shape_prop import ShapeProp
    try:
        graph_module = torch.fx.symbolic_trace(module, concrete_args=defaults_after_first(module))
    except Exception as error:  # control flow on tensor values, unsupported Python: the user's code
        raise UnsupportedError(f"{{opt:arch}} {spec}: torch.fx cannot trace the module's forward ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:160] if str(error) else ''}), so its layer order "
                               "and feature order are unknown", fix="Convert to the torch or npz target, which "
                               "need no layer order") from None
    generator = torch.Generator().manual_seed(TRACE_SEED)
    example = torch.rand((1,) + tuple(input_shape), generator=generator)  # a batch of one
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
    except Exception as error:
        raise UsageError(f"{{opt:arch}} {spec}: the module does not run on an input of shape {input_shape} "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''})",
                         fix="Give {opt:input_shape} the shape one sample has, without the batch axis") from None
    return graph_module.graph


def defaults_after_first(module: Any) -> dict[str, Any]:
    """``forward``'s arguments after the input that have defaults, fixed at them (``Crepe.forward(x,
    embed=False)``: ``if embed:`` cannot be traced symbolically, and the default is what inference runs)."""
    import inspect
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def per_sample_shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(n) for n in shape[1:]) if shape is not None and len(shape) >= 1 else None


def operation(node: Any) -> str:
    """``relu`` for ``torch.relu``/``F.relu``/``x.relu()``/``operator.add`` -> ``add``."""
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def layer_for(node: Any, model: Model, modules: dict[str, Any], names: dict[Any, str], spec: str) -> Layer | None:
    """The canonical layer of one fx node (None for the output and attribute reads)."""
    if node.op == "placeholder":  # the input; forward's other arguments are fixed at their defaults
        return Layer(unique(model, "input"), "input", source_class="input") if per_sample_shape(node) else None
    if node.op == "call_module":
        sub = modules[node.target]
        found = model.find(node.target)
        if found is not None:
            return found
        cls = type(sub).__name__
        return Layer(node.target, WEIGHTLESS.get(cls, "other"), source_class=f"torch.nn.{cls}")
    if node.op in ("call_function", "call_method"):
        if per_sample_shape(node) is None:
            return None  # x.shape[0], sizes: not a tensor of the model
        name = operation(node)
        kind = FUNCTIONS.get(name.strip("_"), FUNCTIONS.get(name, "other"))
        if kind == "reshape" and is_flatten(node):
            kind = "flatten"
        return Layer(unique(model, node.name), kind, {"op": name}, source_class=name)
    return None


def is_flatten(node: Any) -> bool:
    """A reshape of a map (rank > 2) into ``(N, features)``."""
    shape = per_sample_shape(node)
    inputs = [arg for arg in node.all_input_nodes if per_sample_shape(arg) is not None]
    return shape is not None and len(shape) == 1 and bool(inputs) and len(per_sample_shape(inputs[0]) or ()) >= 2


def unique(model: Model, name: str) -> str:
    candidate, n = name, 1
    while model.find(candidate) is not None:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def mark_flattens(model: Model) -> None:
    """Record the Dense layers fed by a flatten of a map whose channels-first order is not known."""
    unknown = []
    for layer in model.layers:
        if layer.kind != "dense" or len(model.input_names(layer)) != 1:
            continue
        source = model.find(model.input_names(layer)[0])
        while source is not None and source.kind in ("activation", "dropout") and len(source.inputs) == 1:
            source = model.find(source.inputs[0])
        if source is None or source.kind != "flatten":
            continue
        before = model.find(source.inputs[0]) if source.inputs else None
        while before is not None and before.kind in ("dropout",) and len(before.inputs) == 1:
            before = model.find(before.inputs[0])
        if before is None or before.kind in ("permute", "reshape", "other", "concat"):
            unknown.append(layer.name)
            source.output_shape = None
            if before is not None:
                before.output_shape = None  # never read as a channels-first map
    if unknown:
        model.source.details[UNKNOWN_FLATTEN] = unknown
