"""What a model read from a state dict must carry for a target, checked before planning: an architecture
(``--arch``) for a target that needs layer kinds, one-layer RNNs for a target that writes no stacked LSTM/GRU, and
a derivable Flatten row order for the keras target.

Kept apart from :mod:`.arch` (which imports the torch tracing machinery) so that every conversion can run these
checks without importing it.
"""

from __future__ import annotations

from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.model import Model

UNKNOWN_FLATTEN = "torch.unknown_flatten"  # SourceInfo.details key: Dense layers reading a permuted map


def unknown_flatten(model: Model) -> list[str]:
    """Dense layers reading a flatten whose feature order could not be derived (see :mod:`.trace`)."""
    return list(model.source.details.get(UNKNOWN_FLATTEN, []))


STACKED_RNN_TARGETS = ("torch", "npz", "keras")  # targets that write a num_layers > 1 LSTM/GRU
ARCHITECTURE_LESS = ("torch_pt", "safetensors")  # source formats whose files may hold no architecture


def require_architecture(model: Model, target_name: str, needs_kinds: bool, template: str | None) -> None:
    """Refuse, before planning, a state dict without ``--arch`` for a target that needs layer kinds, and a
    Dense layer whose feature order could not be derived for the keras target (it reorders Dense rows)."""
    kinds_known = model.has_architecture or bool(model.source.details.get("written_by_weightport"))
    if (needs_kinds and not kinds_known and model.source.format in ARCHITECTURE_LESS
            and not (target_name == "onnx" and template)):
        raise UsageError(f"a state dict has no architecture, and the {target_name} target needs each layer's kind "
                         "(which tensors are conv kernels, which Linear reads a flattened map)",
                         path=model.source.path,
                         fix="Give {opt:arch=model.py:Class} (your own torch module, imported to read its layers; "
                             "add {opt:input_shape=C,H,W} to trace it), or convert to torch, npz or raw")
    stacked = [layer for layer in model.layers if layer.attrs.get("num_layers", 1) > 1]
    if stacked and target_name not in STACKED_RNN_TARGETS and not (target_name == "onnx" and getattr(model, "arch_module", None) is not None):
        layer = stacked[0]
        raise UnsupportedError(f"layer {layer.name!r} is a torch.nn.{layer.kind.upper()} of num_layers="
                               f"{layer.attrs['num_layers']}, which the {target_name} target writes one layer at a "
                               "time only", path=model.source.path,
                               fix=f"Convert to {', '.join(STACKED_RNN_TARGETS)} (keras: one Keras layer per torch "
                                   "layer) or onnx (traced from the {opt:arch} module), or split the module into "
                                   "one-layer RNNs")
    unknown = unknown_flatten(model)
    if unknown and target_name == "keras":
        raise UnsupportedError(f"Linear layer(s) {', '.join(map(repr, unknown))} read a flatten of a permuted map "
                               "(permute/transpose before view): the row order a Keras Flatten needs cannot be "
                               "derived", path=model.source.path,
                               fix="Convert to torch, onnx, theano or npz (channels-first: rows as stored)")
