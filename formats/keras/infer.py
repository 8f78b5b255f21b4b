"""The Keras class of a layer in a weights-only file (``save_weights``: no model config), from its
default name, from ``--layer-kinds``, or from the names and shapes of its weights where they decide it.

Each rule names the weights it needs and what their shapes must say; a rule that does not decide
(a 4-D ``kernel`` whose bias fits both Conv2D and Conv2DTranspose, a recurrent kernel that is neither 3
nor 4 gates wide) gives no answer and the file is refused with ``--layer-kinds`` as the fix.
"""

from __future__ import annotations

from typing import Any, Callable

Weights = dict[str, tuple[str, Any]]  # short variable name -> (key, dataset)

WRAPPERS = {"timedistributed": "TimeDistributed"}  # default-name prefixes of weightless wrappers


def shape(weights: Weights, name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in weights[name][1].shape)


def recurrent(weights: Weights) -> str | None:
    """``kernel`` + ``recurrent_kernel``: an RNN whose gate count is recurrent width / units."""
    rows, width = shape(weights, "recurrent_kernel")[-2:]
    gates = width // rows if rows and width % rows == 0 else 0
    cudnn = "bias" in weights and len(shape(weights, "bias")) == 1 and shape(weights, "bias")[0] == 2 * width
    return {4: "CuDNNLSTM" if cudnn else "LSTM", 3: "CuDNNGRU" if cudnn else "GRU"}.get(gates)


def convolution(weights: Weights) -> str | None:
    """A ``kernel`` of rank 3-5 (Conv1D-3D, channels-last): decided against the transposed convolution only
    by a bias matching one of the two channel axes and not the other."""
    kernel = shape(weights, "kernel")
    rank = len(kernel) - 2
    if "bias" not in weights or kernel[-1] == kernel[-2]:
        return None
    bias = shape(weights, "bias")[0]
    if bias == kernel[-1]:
        return f"Conv{rank}D"
    return f"Conv{rank}DTranspose" if bias == kernel[-2] else None


def kernel_only(weights: Weights) -> str | None:
    rank = len(shape(weights, "kernel"))
    if rank == 2:
        return "Dense"
    return convolution(weights) if rank in (3, 4, 5) else None


def separable(weights: Weights) -> str | None:
    return f"SeparableConv{len(shape(weights, 'depthwise_kernel')) - 2}D"


def depthwise(weights: Weights) -> str | None:
    return f"DepthwiseConv{len(shape(weights, 'depthwise_kernel')) - 2}D"


# (weights that must be present, weights that must be absent, decision) in order of precedence
RULES: list[tuple[set[str], set[str], Callable[[Weights], str | None]]] = [
    ({"kernel", "recurrent_kernel"}, set(), recurrent),
    ({"moving_mean", "moving_variance"}, set(), lambda w: "BatchNormalization"),
    ({"depthwise_kernel", "pointwise_kernel"}, set(), separable),
    ({"depthwise_kernel"}, {"pointwise_kernel"}, depthwise),
    ({"embeddings"}, set(), lambda w: "Embedding"),
    ({"alpha"}, set(), lambda w: "PReLU"),
    ({"kernel"}, {"recurrent_kernel"}, kernel_only),
]


def infer_class(weights: Weights) -> str | None:
    """The Keras class the weights decide, or None (no weights, unknown names, or shapes that fit two)."""
    names = set(weights)
    for needed, absent, decide in RULES:
        if needed <= names and not absent & names:
            return decide(weights)
    return None


def wrapper_of(name: str) -> str | None:
    """``time_distributed_3`` -> ``TimeDistributed`` (a default wrapper name)."""
    return WRAPPERS.get(name.rstrip("0123456789").rstrip("_").lower().replace("_", ""))
