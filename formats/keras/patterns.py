"""Keras's own layouts of every tensor role (the canonical ones are weightport.core.layout's).

Keras stores kernels channels-last (``h w i o``); Keras 1 with ``dim_ordering='th'`` stores
convolution kernels as Theano does (``o i h w``).  Semantics (which Keras versions and backends
stored flipped kernels) are decided by weightport.core.rules, not here.
"""

from __future__ import annotations

KERAS_PATTERNS: dict[str, str] = {
    "conv1d": "w i o",
    "conv2d": "h w i o",
    "conv3d": "d h w i o",
    "conv_transpose1d": "w o i",
    "conv_transpose2d": "h w o i",
    "conv_transpose3d": "d h w o i",
    "depthwise1d": "w i m",
    "depthwise2d": "h w i m",
    "depthwise3d": "d h w i m",
    "pointwise1d": "1 i o",
    "pointwise2d": "1 1 i o",
    "dense": "i o",
}

# Keras 1 with dim_ordering='th' (Theano-style arrays).
KERAS_TH_PATTERNS: dict[str, str] = {
    "conv1d": "o i w",
    "conv2d": "o i h w",
    "conv3d": "o i d h w",
    "conv_transpose2d": "i o h w",
    "dense": "i o",
}
