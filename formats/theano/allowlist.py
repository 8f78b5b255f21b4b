"""An allowlist unpickler: reads the numpy arrays and Theano/PyTensor/Lasagne objects of old model
pickles without importing those libraries and without running anything from the file.

* Globals are resolved from an exact table of (module, name) pairs: numpy's array, scalar and dtype
  reconstruction (``numpy.core`` and ``numpy._core`` spellings) go to checked replacements; classes
  and functions under ``theano.``, ``pytensor.``, ``aesara.`` and ``lasagne.`` become inert stubs that
  only store their state.  Every other global is refused, naming it.
* Arrays are built by :class:`ArrayStub` only after their declared shape, dtype and data length agree;
  object dtypes are refused.  Nothing is allocated beyond the bytes the file holds.
* :func:`arrays_in` walks the result once, sharing-aware and bounded, so a "billion laughs" memo
  structure cannot make it explode.

``pickle.load`` is never used on a file; only :class:`AllowlistUnpickler`.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any, Callable

import numpy as np

from weightport.core.errors import BadInputError, UnsafeInputError

MAX_NODES = 1_000_000
STUB_PREFIXES = ("theano.", "pytensor.", "aesara.", "lasagne.")


class Stub:
    """An inert stand-in for a Theano/PyTensor/Lasagne object: keeps its state, runs nothing."""

    stub_name = "?"
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub {self.stub_name}>"


def stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"stub_name": f"{module}.{name}"})


class ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` returns here: an array built on ``__setstate__``
    once shape, dtype and data agree."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise BadInputError("malformed numpy array state in the pickle", fix="The file is damaged")
        _version, shape, dtype, fortran, data = state
        self.array = build_array(shape, dtype, data, bool(fortran))


def checked_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise BadInputError(f"numpy array state has dtype {type(dtype).__name__}", fix="The file is damaged")
    if dtype.hasobject:
        raise UnsafeInputError("the pickle holds an object-dtype array (it could carry arbitrary objects)",
                               fix="Save the weights as numeric arrays")
    return dtype


def as_bytes(data: Any) -> bytes | bytearray | memoryview:
    if isinstance(data, str):  # Python 2 pickles loaded with encoding='latin1'
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, pickle.PickleBuffer):
        return data.raw()
    raise BadInputError(f"numpy array data is a {type(data).__name__}, not bytes", fix="The file is damaged")


def build_array(shape: Any, dtype: Any, data: Any, fortran: bool = False) -> np.ndarray:
    """An array from declared shape/dtype and its raw bytes, refused unless the sizes agree exactly."""
    dtype = checked_dtype(dtype)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise BadInputError(f"numpy array declares shape {shape!r}", fix="The file is damaged")
    raw = as_bytes(data)
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(raw):
        raise BadInputError(f"numpy array declares {math.prod(shape)} elements of {dtype} "
                            f"({declared} bytes) but holds {len(raw)} bytes", fix="The file is damaged or hostile")
    array = np.frombuffer(raw, dtype=dtype).copy()
    return array.reshape(shape, order="F" if fortran else "C")


def reconstruct(cls: Any, shape: Any, typecode: Any) -> ArrayStub:
    """Replacement for ``numpy.core.multiarray._reconstruct``: only plain ndarrays."""
    if cls is not np.ndarray:
        raise UnsafeInputError(f"refused array subclass {cls!r}", fix="Save plain numpy arrays")
    return ArrayStub()


def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Replacement for ``numpy.core.numeric._frombuffer`` (protocol 5 arrays)."""
    return build_array(tuple(shape), dtype, buffer, order == "F")


def scalar(dtype: Any, data: Any = None) -> Any:
    """Replacement for ``numpy.core.multiarray.scalar``."""
    dtype = checked_dtype(dtype)
    raw = as_bytes(data)
    if len(raw) != dtype.itemsize:
        raise BadInputError("numpy scalar with the wrong number of bytes", fix="The file is damaged")
    return np.frombuffer(raw, dtype=dtype)[0]


def make_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Replacement for ``numpy.dtype``: only simple type codes, never object."""
    if not isinstance(spec, str) or not spec or len(spec) > 8:
        raise UnsafeInputError(f"refused numpy dtype {spec!r}", fix="Save numeric arrays")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise BadInputError(f"unknown numpy dtype {spec!r}", fix="The file is damaged") from None
    return checked_dtype(dtype)


def codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode``, which Python 3 protocol-2 pickles use for bytes: only str in latin-1."""
    if not isinstance(text, str) or str(encoding).lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafeInputError("refused _codecs.encode other than of text to latin-1",
                               fix="Only numpy arrays and Theano objects are read")
    return text.encode("latin1")


def gpu_unpickler(array: Any) -> Any:
    """``CudaNdarray_unpickler`` / ``GpuArray_unpickler``: the pickled value is already the numpy array."""
    return array


def reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor``, limited to our stubs."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise UnsafeInputError(f"refused to reconstruct {cls!r}", fix="Only Theano/PyTensor objects are read")
    return cls.__new__(cls)


NUMPY_GLOBALS: dict[tuple[str, str], Any] = {}
for _core in ("numpy.core", "numpy._core"):
    NUMPY_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = reconstruct
    NUMPY_GLOBALS[(f"{_core}.multiarray", "scalar")] = scalar
    NUMPY_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = frombuffer
NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
NUMPY_GLOBALS[("numpy", "dtype")] = make_dtype
NUMPY_GLOBALS[("_codecs", "encode")] = codecs_encode
for _module in ("copy_reg", "copyreg"):
    NUMPY_GLOBALS[(_module, "_reconstructor")] = reconstructor
for _module in ("__builtin__", "builtins"):
    NUMPY_GLOBALS[(_module, "object")] = object
GPU_UNPICKLERS = {"CudaNdarray_unpickler", "GpuArray_unpickler"}


class AllowlistUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving globals only from the allowlist (see module docstring)."""

    def __init__(self, file: io.BufferedIOBase, path: str, persistent: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.persistent = persistent
        self.stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[key]
        if module.startswith(STUB_PREFIXES) or module in ("theano", "pytensor", "aesara", "lasagne"):
            if name in GPU_UNPICKLERS:
                return gpu_unpickler
            return self.stubs.setdefault(key, stub_class(module, name))
        raise UnsafeInputError(f"refused pickle global {module}.{name} (only numpy arrays and Theano/PyTensor/"
                               "Lasagne objects are read; nothing from the file is run)", path=self.path,
                               fix="Re-save the weights as numpy arrays (np.savez) or safetensors")

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent is None:
            raise UnsafeInputError("the pickle refers to persistent objects outside it", path=self.path,
                                   fix="Give a plain pickle or a theano.misc.pkl_utils zip")
        return self.persistent(pid)


def safe_loads(data: bytes, path: str, persistent: Callable[[Any], Any] | None = None) -> Any:
    """Unpickle ``data`` with the allowlist; every failure is a one-line :class:`BadInputError`."""
    try:
        return AllowlistUnpickler(io.BytesIO(data), path, persistent).load()
    except (BadInputError, UnsafeInputError) as error:
        raise error.with_path(path)
    except RecursionError:
        raise BadInputError("the pickle nests too deeply", path=path, fix="The file is damaged or hostile") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError) as error:
        raise BadInputError(f"not a readable pickle ({type(error).__name__}: {str(error)[:120]})", path=path,
                            fix="The file is truncated or not a pickle") from None


def arrays_in(value: Any, path: str) -> list[tuple[str | None, np.ndarray]]:
    """Every array in an unpickled structure, in order, with the name it carries (a shared variable's
    name or a dict key).  Shared sub-structures are visited once; at most :data:`MAX_NODES` nodes."""
    found: list[tuple[str | None, np.ndarray]] = []
    seen: set[int] = set()
    budget = [MAX_NODES]

    def visit(item: Any, name: str | None) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise BadInputError(f"the pickle holds more than {MAX_NODES} objects", path=path,
                                fix="The file is hostile or not a weights file")
        if isinstance(item, np.ndarray):
            found.append((name, item))
            return
        if isinstance(item, ArrayStub):
            if item.array is None:
                raise BadInputError("an array in the pickle has no data", path=path, fix="The file is damaged")
            found.append((name, item.array))
            return
        if id(item) in seen:
            return
        seen.add(id(item))
        if isinstance(item, dict):
            for key, sub in item.items():
                visit(sub, key if isinstance(key, str) else name)
        elif isinstance(item, (list, tuple)):
            for sub in item:
                visit(sub, name)
        elif isinstance(item, Stub):
            visit_stub(item, name)

    def visit_stub(item: Stub, name: str | None) -> None:
        state = item.state if isinstance(item.state, dict) else {}
        own = state.get("name") if isinstance(state.get("name"), str) else name
        container = state.get("container")
        if isinstance(container, Stub) and isinstance(container.state, dict):
            storage = container.state.get("storage")
            if isinstance(storage, list) and storage:
                visit(storage[0], own)
                return
        for arg in item.args:
            visit(arg, own)

    visit(value, None)
    return found
