"""NumPy/scipy as the oracle: true convolution with the stored kernel (``scipy.signal.convolve``, for
kernels stored with convolution semantics: Theano, Lasagne, Keras on Theano) and ``x @ kernel`` for
dense layers in their stored layout.  See :mod:`weightport.core.oracle` for the contract.
"""

from __future__ import annotations

import numpy as np

from weightport.core.layout import Layout, relayout
from weightport.core.oracle import LayerCase


def scipy_conv(case: LayerCase, x_first: np.ndarray) -> np.ndarray:
    """True convolution with the stored kernel (scipy.signal.convolve), stride 1, no dilation."""
    import scipy.signal
    a = case.layer.attrs
    if any(s != 1 for s in a["strides"]) or any(d != 1 for d in a["dilations"]) or a.get("groups", 1) != 1:
        raise NotImplementedError("the scipy check runs stride 1, undilated, ungrouped convolutions")
    kernel = case.stored["weight"]
    axes = case.stored_layout["weight"].split()
    o_axis, i_axis = axes.index("o"), axes.index("i")
    out_channels, in_channels = kernel.shape[o_axis], kernel.shape[i_axis]
    outputs = []
    for n in range(x_first.shape[0]):
        per_out = []
        for o in range(out_channels):
            total = 0.0
            for i in range(in_channels):
                index = [slice(None)] * kernel.ndim
                index[o_axis], index[i_axis] = o, i
                spatial = kernel[tuple(index)]  # remaining axes are spatial, in stored order
                total = total + scipy.signal.convolve(x_first[n, i].astype(np.float64), spatial.astype(np.float64),
                                                      mode="valid")
            per_out.append(total + (case.stored["bias"][o] if "bias" in case.stored else 0.0))
        outputs.append(np.stack(per_out))
    return np.stack(outputs).astype(np.result_type(x_first, kernel))  # float64 when the case is float64


def source_dense(case: LayerCase, x: np.ndarray) -> np.ndarray:
    """``x @ kernel`` with the stored (in, out) kernel; after a Flatten, ``x``'s features are first put in
    the source's flatten order (e.g. H, W, C), as the source model would have flattened them."""
    kernel = case.stored["weight"]
    pattern = case.stored_layout["weight"]
    if pattern != "i o":
        features, out = pattern.rsplit(" ", 1)
        if out != "o" or not features.startswith("("):
            raise NotImplementedError(f"dense check cannot read stored layout {pattern}")
        known = dict(getattr(case.layer.tensors["weight"].transforms[0], "known", ()))
        canonical = "(" + " ".join(["c"] + [a for a in ("d", "h", "w") if a in known]) + ")"
        x = relayout(x, Layout(f"n {canonical}"), Layout(f"n {features}"), known)
    y = x.astype(np.float64) @ kernel.astype(np.float64)
    if "bias" in case.stored:
        y = y + case.stored["bias"]
    return y.astype(np.result_type(x, kernel))
