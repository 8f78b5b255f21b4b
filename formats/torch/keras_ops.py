"""Keras functional layers run by the canonical torch module: :func:`register` adds them to the module's
tables (``RUNS``, ``BUILDERS``, ``OUTPUT_KINDS`` of :mod:`weightport.formats.torch.module`, which calls it
once; this module imports nothing from it, so there is no import cycle).

A Keras ``Bidirectional`` with ``merge_mode`` sum, mul or ave runs the module's concatenating RNN and then
merges its forward and backward halves as Keras does.

Permute, Reshape and RepeatVector work in the source's (Keras, channels-last) axis order: a feature map
reaching them is moved channels-last first (``from_map``, set by
:func:`weightport.core.shapes.map_layers`), and their output stays in Keras's order (value kind ``seq``),
so a Flatten after them flattens exactly as Keras does.  Merges take their inputs as they come.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from weightport.core.errors import UnsupportedError
from weightport.core.model import Layer, Model

RUNS: dict[str, Callable[[Layer, list[torch.Tensor]], torch.Tensor]] = {}
BUILDERS: dict[str, Callable[[Layer, Model], nn.Module]] = {}
OUTPUT_KINDS: dict[str, Callable[[Layer, str], str]] = {}
ORIGINAL: dict[str, dict[str, Any]] = {"builders": {}}  # the module's own entries we extend


def registrar(table: dict[str, Any]) -> Callable[..., Callable[[Any], Any]]:
    """A decorator factory adding a function to ``table`` under each of the given layer kinds."""
    def for_kinds(*kinds: str) -> Callable[[Any], Any]:
        def add(function: Any) -> Any:
            table.update(dict.fromkeys(kinds, function))
            return function
        return add
    return for_kinds


runs, builds, output_kind = registrar(RUNS), registrar(BUILDERS), registrar(OUTPUT_KINDS)


def register(builders: dict[str, Any], runs_table: dict[str, Any], output_kinds: dict[str, Any]) -> None:
    """Add these layers to the canonical module's tables, keeping the entries they extend (the module's
    RNN builders) to call them."""
    ORIGINAL["builders"].update({kind: builders[kind] for kind in BUILDERS if kind in builders})
    builders.update(BUILDERS)
    runs_table.update(RUNS)
    output_kinds.update(OUTPUT_KINDS)

KERAS_ORDER = ("permute", "reshape", "repeat_vector")
MERGES = ("subtract", "average", "maximum", "minimum")


def keras_order(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """``x`` in Keras's axis order: a channels-first map (batch, c, *spatial) -> (batch, *spatial, c)."""
    return torch.movedim(x, 1, -1) if layer.attrs.get("from_map") and x.dim() > 2 else x


@runs("permute")
def permute(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Keras ``Permute(dims)``: dims are 1-based and leave the batch axis in place."""
    return keras_order(layer, inputs[0]).permute(0, *(int(d) for d in layer.attrs["dims"]))


@runs("reshape")
def reshape(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Keras ``Reshape(target_shape)`` (row-major, ``-1`` allowed) of the Keras-ordered input."""
    x = keras_order(layer, inputs[0])
    return x.reshape((x.shape[0],) + tuple(int(d) for d in layer.attrs["target_shape"]))


@runs("repeat_vector")
def repeat_vector(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Keras ``RepeatVector(n)``: (batch, f) -> (batch, n, f)."""
    return inputs[0].unsqueeze(1).expand(-1, int(layer.attrs["n"]), -1).contiguous()


MERGE_OPS = {
    "subtract": lambda xs: xs[0] - xs[1],
    "average": lambda xs: torch.stack(xs).mean(dim=0),
    "maximum": lambda xs: torch.stack(xs).amax(dim=0),
    "minimum": lambda xs: torch.stack(xs).amin(dim=0),
}


@runs(*MERGES)
def merge(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Keras Subtract / Average / Maximum / Minimum of same-shaped inputs."""
    return MERGE_OPS[layer.kind](inputs)


output_kind(*KERAS_ORDER)(lambda layer, feeding: "seq")
output_kind(*MERGES)(lambda layer, feeding: feeding)


MERGE_MODES = {
    "sum": lambda forward, backward: forward + backward,
    "mul": lambda forward, backward: forward * backward,
    "ave": lambda forward, backward: (forward + backward) / 2,
}


MASK_KEEPERS = ("dropout", "activation", "dense", "layernorm")  # Keras layers passing a mask on unchanged


def masking_embedding(model: Model, layer: Layer) -> str | None:
    """The Embedding(mask_zero=True) whose mask reaches recurrent ``layer`` (through layers that keep a mask:
    dropout, activations, per-step Dense, LayerNormalization, RNNs returning sequences), or None."""
    names = model.input_names(layer)
    seen: set[str] = set()
    while len(names) == 1 and names[0] not in seen:
        seen.add(names[0])
        current = model.find(names[0])
        if current is None:
            return None
        if current.kind == "embedding":
            return current.name if current.attrs.get("mask_zero") else None
        keeps = current.kind in MASK_KEEPERS or (current.kind in ("lstm", "gru")
                                                 and current.attrs.get("return_sequences"))
        if not keeps:
            return None
        names = model.input_names(current)
    return None


class MaskedRecurrent(nn.Module):
    """A Keras LSTM/GRU reading a masked sequence (an Embedding with ``mask_zero=True`` upstream): at a masked
    step the state is carried through unchanged and the output is the previous step's (zeros with
    ``zero_output_for_mask``, which Keras's Bidirectional sets when it returns sequences), as Keras's
    ``backend.rnn`` does.  Holds torch.nn.LSTM/GRU's own parameters (same state_dict keys) and runs
    ``torch.lstm_cell`` / ``torch.gru_cell`` one step at a time.  Output conventions as
    :func:`weightport.formats.torch.module.keras_recurrent` (go_backwards: outputs in reading order;
    bidirectional: halves concatenated per step, or merged by ``merge_mode``)."""

    def __init__(self, rnn: nn.Module, layer: Layer) -> None:
        super().__init__()
        for name, parameter in rnn.named_parameters():  # torch.nn.LSTM/GRU's own keys, not nested
            self.register_parameter(name, parameter)
        self.hidden_size, self.kind, a = rnn.hidden_size, layer.kind, layer.attrs
        self.return_sequences, self.go_backwards = bool(a["return_sequences"]), bool(a["go_backwards"])
        self.bidirectional, self.merge = bool(a.get("bidirectional")), a.get("merge_mode", "concat")
        self.zero_output = bool(a.get("zero_output_for_mask")) or (self.bidirectional and self.return_sequences)
        self.masked_by: str | None = None  # the Embedding whose mask the canonical module passes in

    def direction(self, x: torch.Tensor, mask: torch.Tensor, suffix: str, backwards: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs in reading order, last output) of one direction."""
        weights = [getattr(self, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if backwards:
            x, mask = torch.flip(x, dims=[1]), torch.flip(mask, dims=[1])
        h = x.new_zeros(x.shape[0], self.hidden_size)
        c, previous, outputs = h, h, []
        for t in range(x.shape[1]):
            keep = mask[:, t:t + 1]
            if self.kind == "lstm":
                h_new, c_new = torch.lstm_cell(x[:, t], (h, c), *weights)
                c = torch.where(keep, c_new, c)
            else:
                h_new = torch.gru_cell(x[:, t], h, *weights)
            h = torch.where(keep, h_new, h)
            previous = torch.where(keep, h_new, torch.zeros_like(h_new) if self.zero_output else previous)
            outputs.append(previous)
        return torch.stack(outputs, dim=1), h if not self.zero_output else outputs[-1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Any:
        forward, last = self.direction(x, mask, "", self.go_backwards)
        if not self.bidirectional:
            return forward if self.return_sequences else last
        backward, back_last = self.direction(x, mask, "_reverse", True)
        if self.return_sequences:
            halves = (forward, torch.flip(backward, dims=[1]))  # the backward half in time order
        else:
            halves = (last, back_last)
        if self.merge in MERGE_MODES:
            return MERGE_MODES[self.merge](*halves)
        return halves if self.merge == "none" else torch.cat(halves, dim=-1)  # Keras's None: two outputs


@builds("lstm", "gru")
def merged_recurrent(layer: Layer, model: Model) -> nn.Module:
    """The module's RNN; a Bidirectional with merge_mode sum/mul/ave has its concatenated halves merged; one
    reading an Embedding's mask (``mask_zero``) is a :class:`MaskedRecurrent` (the canonical module gives it
    the mask)."""
    merge = layer.attrs.get("merge_mode")
    embedding = masking_embedding(model, layer)
    if embedding:
        plain = replace(layer, attrs={**layer.attrs, "merge_mode": "concat", "return_sequences": True,
                                      "go_backwards": False})
        masked = MaskedRecurrent(ORIGINAL["builders"][layer.kind](plain, model), layer)
        masked.masked_by = embedding
        return masked
    masked = [other.name for other in model.layers if other.attrs.get("mask_zero")]
    if masked:
        raise UnsupportedError(f"layer {layer.name!r} may read the mask of Embedding {masked[0]!r} (mask_zero) "
                               "through layers whose mask handling the torch module does not follow",
                               fix="The layer checks still compare each layer; feed inputs without zeros to check "
                                   "the whole model")
    apart = bool(layer.attrs.get("bidirectional")) and merge == "none"  # two outputs: forward, backward
    if not layer.attrs.get("bidirectional") or (merge not in MERGE_MODES and not apart):
        return ORIGINAL["builders"][layer.kind](layer, model)
    concatenating = replace(layer, attrs={**layer.attrs, "merge_mode": "concat"})
    rnn = ORIGINAL["builders"][layer.kind](concatenating, model)

    def merged(_module: nn.Module, _args: Any, out: torch.Tensor) -> Any:
        forward, backward = out.split(out.shape[-1] // 2, dim=-1)
        return (forward, backward) if apart else MERGE_MODES[merge](forward, backward)
    rnn.register_forward_hook(merged)
    return rnn




@runs("dot")
def dot(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Keras ``Dot(axes, normalize)`` of two vectors (batch, d) or sequences (batch, n, d): the batch
    matrix product over the named axes (batch axis counted as 0); inputs in Keras's own axis order."""
    a, b = inputs
    axes = layer.attrs.get("axes", -1)
    first, second = (axes, axes) if isinstance(axes, int) else (int(axes[0]), int(axes[1]))
    first, second = first % a.dim(), second % b.dim()
    if layer.attrs.get("normalize"):
        a, b = torch.nn.functional.normalize(a, dim=first), torch.nn.functional.normalize(b, dim=second)
    left = torch.movedim(a, first, -1).reshape(a.shape[0], -1, a.shape[first])
    right = torch.movedim(b, second, 1).reshape(b.shape[0], b.shape[second], -1)
    out = torch.bmm(left, right)
    rest = [n for k, n in enumerate(a.shape) if k not in (0, first)] + \
        [n for k, n in enumerate(b.shape) if k not in (0, second)]
    return out.reshape([a.shape[0]] + (rest or [1]))


output_kind("dot")(lambda layer, feeding: "seq")


@runs("not_equal")
def not_equal(layer: Layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Keras 3's ``NotEqual(x, value)`` op layer (the mask an Embedding(mask_zero=True) gives an RNN, recorded
    as its own node; the RNN takes the Embedding's mask itself, see :class:`MaskedRecurrent`)."""
    value = layer.attrs.get("value")
    if value is None:
        raise UnsupportedError(f"layer {layer.name!r}: NotEqual whose operand is not one recorded number")
    return inputs[0] != value


output_kind("not_equal")(lambda layer, feeding: "flat")
