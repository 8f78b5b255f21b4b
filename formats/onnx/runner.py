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


def run_onnx_file(path: str, x: np.ndarray | tuple[np.ndarray, ...]) -> np.ndarray:
    """The graph in ``path`` run by onnxruntime (CPU) on ``x`` (a tuple: one array per graph input, in the
    graph's order), each cast to its graph input's type; its first output.  Inputs other than the arrays
    given, or a fixed input size an array does not have, are refused (NotImplementedError with the reason)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise NotImplementedError(f"onnxruntime cannot load it ({type(error).__name__}: "
                                  f"{str(error).strip()[:200]})") from None
    inputs = session.get_inputs()
    arrays = x if isinstance(x, tuple) else (x,)
    if len(inputs) != len(arrays):
        raise NotImplementedError(f"the graph has {len(inputs)} inputs; the check runs {len(arrays)}")
    feeds = {}
    for declared, array in zip(inputs, arrays):
        fixed = [(axis, n) for axis, (n, got) in enumerate(zip(declared.shape, array.shape))
                 if isinstance(n, int) and n != got]
        if len(declared.shape) == array.ndim and fixed:
            axis, n = fixed[0]
            raise NotImplementedError(f"its input {declared.name!r} has a fixed size {n} on axis {axis}, the input "
                                      f"here {array.shape[axis]} (ask for {n} samples when that axis is the batch)")
        dtype = ORT_TYPES.get(declared.type)
        if dtype is None:
            raise NotImplementedError(f"its input type {declared.type} has no seeded random input here")
        feeds[declared.name] = array.astype(dtype)
    return np.asarray(session.run([session.get_outputs()[0].name], feeds)[0])


def run_onnx_source(source: Any, x: np.ndarray) -> np.ndarray:
    """:func:`run_onnx_file` on the file ``source`` (a weightport Model) was read from."""
    return run_onnx_file(source.source.path, x)
