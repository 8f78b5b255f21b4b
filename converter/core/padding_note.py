"""The warning for layers whose explicit pads differ before and after, worded for the target.

TensorFlow's 'same' and ONNX's ``SAME_UPPER`` put the odd pad at the end of an axis, ONNX's
``SAME_LOWER`` at the start; a target whose convolution pads both sides alike cannot express either,
so its user must pad the input explicitly.  :data:`PAD_ADVICE` says how, per target, and where the
pads are recorded; a target missing from it (ONNX: the written graph or template carries its own
pads) gets no warning.
"""

from __future__ import annotations

from weightport.core.model import Layer, Model

# target -> (what to do, where the pads are recorded)
PAD_ADVICE: dict[str, tuple[str, str]] = {
    "torch": ("torch.nn.Conv pads both sides alike: pad the input with F.pad before a padding=0 conv",
              "the file's metadata (weightport.graph)"),
    "npz": ("pad the input explicitly with these pads before a 'valid' convolution or correlation",
            "the JSON sidecar (graph layers' attrs.pads)"),
    "theano": ("Theano's conv2d and Lasagne's pad pad both sides alike: pad the input explicitly before a "
               "border_mode='valid' conv", "the spec (layers' pads)"),
}
SIDES = {frozenset({"end"}): "more at the end of each uneven axis, as TensorFlow 'same' and ONNX SAME_UPPER",
         frozenset({"start"}): "more at the start of each uneven axis, as ONNX SAME_LOWER",
         frozenset({"start", "end"}): "more at the start of some axes and at the end of others"}


def uneven_sides(layer: Layer) -> frozenset[str]:
    """Which side gets the larger pad on the layer's uneven axes (empty when every axis is even)."""
    pads = layer.attrs.get("pads") or []
    return frozenset("end" if after > before else "start" for before, after in pads if before != after)


def padding_warnings(model: Model, target: str) -> list[str]:
    """One warning per kind of asymmetry (end, start, mixed) for ``target``, naming its layers and their
    ``(before, after)`` pads per spatial axis."""
    if target not in PAD_ADVICE:
        return []
    advice, where = PAD_ADVICE[target]
    groups: dict[frozenset[str], list[str]] = {}
    for layer in model.layers:
        sides = uneven_sides(layer)
        if sides:
            pairs = ", ".join(f"({before}, {after})" for before, after in layer.attrs["pads"])
            groups.setdefault(sides, []).append(f"{layer.name} (pads {pairs})")
    return [f"asymmetric padding ({SIDES[sides]}) in layers {', '.join(layers)}: {advice}; the pads are "
            f"recorded in {where}" for sides, layers in groups.items()]
