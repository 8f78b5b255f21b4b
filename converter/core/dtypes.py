"""bfloat16, the one tensor dtype NumPy lacks, through the ``ml_dtypes`` package (extra ``bf16``).

``ml_dtypes`` is imported only when a bfloat16 tensor is met, so the core stays
NumPy + h5py.  Files store bfloat16 as 2-byte words (safetensors ``BF16``, ONNX
``BFLOAT16``, torch ``torch.bfloat16``, Keras 3 HDF5 opaque 2-byte datasets
with ``attrs["dtype"] = "bfloat16"``); :func:`as_bfloat16` reinterprets those
bytes without changing a bit.
"""

from __future__ import annotations

import numpy as np

from weightport.core.errors import MissingDependencyError

BFLOAT16 = "bfloat16"


def bfloat16() -> np.dtype:
    """The NumPy dtype of bfloat16 (from ml_dtypes)."""
    try:
        import ml_dtypes
    except ImportError:
        raise MissingDependencyError("ml_dtypes", "bf16", "Reading or writing bfloat16 tensors") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype: np.dtype) -> bool:
    return np.dtype(dtype).name == BFLOAT16


def as_bfloat16(array: np.ndarray) -> np.ndarray:
    """The same 2-byte words seen as bfloat16 (a view, no copy); shape unchanged."""
    if array.dtype.itemsize != 2:
        raise ValueError(f"bfloat16 needs 2-byte words, got {array.dtype}")
    return array.view(bfloat16())


def tensor_to_numpy(torch, value) -> np.ndarray:
    """A torch tensor's values as NumPy on the CPU, bit for bit (bfloat16 through its 16-bit words)."""
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        return as_bfloat16(value.view(torch.int16).numpy())
    return value.numpy()


def numpy_to_tensor(torch, array: np.ndarray):
    """A torch tensor owning a copy of ``array``: same dtype (bfloat16 included), same bits."""
    if is_bfloat16(array.dtype):
        return torch.from_numpy(np.array(array.view(np.int16), copy=True)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def widened(array: np.ndarray) -> np.ndarray:
    """bfloat16 as float32, exactly (every bfloat16 is a float32); any other array unchanged."""
    return array.astype(np.float32) if is_bfloat16(array.dtype) else array
