"""onnxruntime running a whole ONNX source file, as its own runtime computes it: the reference of a
validation without recorded outputs (weightport.checks.source_reference).  The file goes to
onnxruntime as it is (external data beside it included); nothing of weightport's reading code is used.
``NotImplementedError`` carries the reason when onnxruntime cannot run it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def run_onnx_file(path: str, x: np.ndarray, details: dict[str, Any] | None = None) -> np.ndarray:
    """The graph in ``path`` run by onnxruntime (CPU) on ``x``, cast to the graph input's type; its first
    output.  A graph with several inputs, or whose fixed input size ``x`` does not have, is refused
    (NotImplementedError with the reason)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise NotImplementedError(f"onnxruntime cannot load it ({type(error).__name__}: "
                                  f"{str(error).strip()[:200]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise NotImplementedError(f"the graph has {len(inputs)} inputs; the check runs one")
    fixed = [(axis, n) for axis, (n, got) in enumerate(zip(inputs[0].shape, x.shape)) if isinstance(n, int) and n != got]
    if len(inputs[0].shape) == x.ndim and fixed:
        axis, n = fixed[0]
        raise NotImplementedError(f"its input {inputs[0].name!r} has a fixed size {n} on axis {axis}, the input here "
                                  f"{x.shape[axis]} (ask for {n} samples when that axis is the batch)")
    dtype = ORT_TYPES.get(inputs[0].type)
    if dtype is None:
        raise NotImplementedError(f"its input type {inputs[0].type} has no seeded random input here")
    return np.asarray(session.run([session.get_outputs()[0].name], {inputs[0].name: x.astype(dtype)})[0])
