"""An allowlist unpickler: reads the numpy arrays and Theano/PyTensor/Lasagne objects of old model
pickles without importing those libraries and without running anything from the file.

* Before anything is built, :func:`prescan` walks the opcodes once (:func:`pickletools.genops`, which
  builds nothing): at most :data:`~weightport.core.budget.MAX_ITEMS` opcodes, every string and bytes
  argument inside the file, memo indices no larger than the opcode count (a 9-byte ``LONG_BINPUT 2**27``
  made the C unpickler allocate 2 GiB), nesting no deeper than :data:`~weightport.core.budget.MAX_NESTING`.
* Globals are resolved from an exact table of (module, name) pairs.  Each is an inert constructor of a
  checked value, wrapped so that a BUILD on the global itself is refused (a BUILD with slot state on a
  function set its ``__defaults__`` for the whole process).  numpy's array, scalar and dtype
  reconstruction (``numpy.core`` and ``numpy._core`` spellings) go to checked replacements;
  ``numpy.ndarray`` and ``object`` are markers, never called; classes and functions under ``theano.``,
  ``pytensor.``, ``aesara.`` and ``lasagne.`` become inert stubs that only store their state.  Every other
  global is refused, naming it.
* BUILD reaches only our own objects: :class:`Stub` (keeps the state), :class:`DtypeStub` (accepts only
  the state of a plain dtype: a byte order) and :class:`ArrayStub` (once).  A real ``numpy.dtype`` or
  ``ndarray`` is never on the unpickler's stack, so numpy's own ``__setstate__`` never sees the file.
* Dtypes are plain numbers only (``kind in 'biufc'``: no fields, subarrays, strings, datetimes or
  objects); arrays are built by :class:`ArrayStub` only after their declared shape, dtype and data length
  agree, and always own a copy of the file's bytes; all arrays of a pickle together hold no more bytes
  than the pickle (memo references to one bytes object do not make many arrays from it).
* :func:`arrays_in` walks the result once, iteratively, sharing-aware and bounded, so a "billion laughs"
  memo structure cannot make it explode and deep nesting cannot exhaust the stack.

``pickle.load`` is never used on a file; only :class:`AllowlistUnpickler`.
"""

from __future__ import annotations

import contextvars
import io
import math
import pickle
import pickletools
import re
from typing import Any, Callable, Iterator

import numpy as np

from weightport.core.budget import (MAX_COMPUTED_BYTES, MAX_ITEMS, MAX_NESTING, check_computed_bytes,
                                    check_stored_bytes)
from weightport.core.errors import BadInputError, UnsafeInputError

STUB_PREFIXES = ("theano.", "pytensor.", "aesara.", "lasagne.")
NUMERIC_KINDS = "biufc"                 # bool, signed, unsigned, float, complex
DTYPE_SPEC = re.compile(r"[<>=|]?(?:[biufc]\d{1,2}|[?bBhHiIlLqQpPefdgFDG])")
HOSTILE = "The file is damaged or crafted; re-save the weights as numpy arrays (np.savez) or safetensors"
PLAIN = "only plain numeric dtypes are read: no object, structured, string or datetime dtypes"
# (path, bytes the pickle holds, bytes of arrays built so far) of the pickle this thread is unpickling
BUILT: contextvars.ContextVar[list] = contextvars.ContextVar("BUILT")


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


class Allowed:
    """An allowlisted global as the file sees it: calls ``function`` (an inert constructor of a checked
    value) and refuses a BUILD on itself, so nothing process-wide can be changed from a file."""

    __slots__ = ("name", "function")

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise UnsafeInputError(f"the pickle sets state on the global {self.name} (only Theano/PyTensor/Lasagne "
                               "objects take state)", fix=HOSTILE)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


def never_called(name: str) -> Allowed:
    """A global that stands only for a class (``_reconstruct``'s ``numpy.ndarray``, ``_reconstructor``'s
    ``object``): calling it would build an object the file holds no bytes for."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnsafeInputError(f"the pickle calls {name}() (arrays are only built from the bytes they hold)",
                               fix=HOSTILE)
    return Allowed(name, refuse)


NDARRAY = never_called("numpy.ndarray")
OBJECT = never_called("object")


def plain_dtype(dtype: np.dtype, what: str = "numpy array") -> np.dtype:
    """``dtype`` when it is a plain number (``kind in 'biufc'``, no fields or subarray), else refused."""
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeInputError(f"{what} has dtype {dtype} ({PLAIN})", fix="Save the weights as numeric arrays")
    return dtype


# numpy.dtype's state, by its length: where the byte order is, the items that must be None (subarray, names,
# fields, metadata), the sizes (elsize, alignment: -1 or the dtype's own) and the flags (the dtype's own)
DTYPE_STATES = {5: (0, (1, 2), (3, 4), None), 6: (1, (2, 3), (4, 5), None), 7: (1, (2, 3, 4), (5, 6), None),
                8: (1, (2, 3, 4), (5, 6), 7), 9: (1, (2, 3, 4, 8), (5, 6), 7)}


class DtypeStub:
    """What ``numpy.dtype(spec, align, copy)`` returns here: a plain numeric dtype whose only settable
    state is its byte order (the BUILD numpy writes after it: ``(3, '<', None, None, None, -1, -1, 0)``)."""

    __slots__ = ("dtype", "built")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = plain_dtype(dtype)
        self.built = False

    def __setstate__(self, state: Any) -> None:
        layout = DTYPE_STATES.get(len(state)) if isinstance(state, tuple) and not self.built else None
        if layout is None:
            raise UnsafeInputError("the pickle sets a numpy dtype's state twice or in an unknown form", fix=HOSTILE)
        endian, nones, sizes, flags = layout
        dtype = self.dtype
        if state[endian] not in ("<", ">", "=", "|") or any(state[k] is not None for k in nones) \
                or any(state[k] not in (-1, dtype.itemsize, dtype.alignment) for k in sizes) \
                or flags is not None and state[flags] != dtype.flags:
            raise UnsafeInputError(f"the pickle gives numpy dtype {dtype} fields, a subarray, other sizes or flags "
                                   f"({PLAIN})", fix=HOSTILE)
        if state[endian] in "<>":
            self.dtype = dtype.newbyteorder(state[endian])
        self.built = True


def checked_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, DtypeStub):
        raise BadInputError(f"numpy array state has dtype {type(dtype).__name__}", fix="The file is damaged")
    return dtype.dtype


class ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` returns here: an array built on ``__setstate__``
    once shape, dtype and data agree.  ``_frombuffer`` returns one already built."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise UnsafeInputError("the pickle sets the state of an array twice", fix=HOSTILE)
        if not isinstance(state, tuple) or len(state) != 5:
            raise BadInputError("malformed numpy array state in the pickle", fix="The file is damaged")
        _version, shape, dtype, fortran, data = state
        self.array = build_array(shape, dtype, data, bool(fortran))


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
    built = BUILT.get(None)
    if built is not None:  # a pickle holds each array's bytes once: memo references must not copy them again
        built[2] += declared
        check_stored_bytes(built[2], built[1], built[0], "the pickle's arrays (all together)")
    array = np.frombuffer(raw, dtype=dtype).copy()
    return array.reshape(shape, order="F" if fortran else "C")


def reconstruct(cls: Any, shape: Any, typecode: Any) -> ArrayStub:
    """Replacement for ``numpy.core.multiarray._reconstruct``: only plain ndarrays."""
    if cls is not NDARRAY:
        raise UnsafeInputError(f"refused array subclass {cls!r}", fix="Save plain numpy arrays")
    return ArrayStub()


def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> ArrayStub:
    """Replacement for ``numpy.core.numeric._frombuffer`` (protocol 5 arrays)."""
    if not isinstance(shape, (tuple, list)) or order not in ("C", "F"):
        raise BadInputError("malformed numpy array in the pickle", fix="The file is damaged")
    return ArrayStub(build_array(tuple(shape), dtype, buffer, order == "F"))


def scalar(dtype: Any, data: Any = None) -> Any:
    """Replacement for ``numpy.core.multiarray.scalar``."""
    dtype = checked_dtype(dtype)
    raw = as_bytes(data)
    if len(raw) != dtype.itemsize:
        raise BadInputError("numpy scalar with the wrong number of bytes", fix="The file is damaged")
    return np.frombuffer(raw, dtype=dtype)[0]


def make_dtype(spec: Any, align: Any = False, copy: Any = False) -> DtypeStub:
    """Replacement for ``numpy.dtype``: only plain numeric type codes."""
    if not isinstance(spec, str) or not DTYPE_SPEC.fullmatch(spec):
        raise UnsafeInputError(f"refused numpy dtype {spec!r} ({PLAIN})", fix="Save numeric arrays")
    try:
        return DtypeStub(np.dtype(spec))
    except TypeError:
        raise BadInputError(f"unknown numpy dtype {spec!r}", fix="The file is damaged") from None


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
    if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not OBJECT:
        raise UnsafeInputError(f"refused to reconstruct {cls!r}", fix="Only Theano/PyTensor objects are read")
    return cls.__new__(cls)


NUMPY_GLOBALS: dict[tuple[str, str], Allowed] = {}
for _core in ("numpy.core", "numpy._core"):
    NUMPY_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = Allowed(f"{_core}.multiarray._reconstruct", reconstruct)
    NUMPY_GLOBALS[(f"{_core}.multiarray", "scalar")] = Allowed(f"{_core}.multiarray.scalar", scalar)
    NUMPY_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = Allowed(f"{_core}.numeric._frombuffer", frombuffer)
NUMPY_GLOBALS[("numpy", "ndarray")] = NDARRAY
NUMPY_GLOBALS[("numpy", "dtype")] = Allowed("numpy.dtype", make_dtype)
NUMPY_GLOBALS[("_codecs", "encode")] = Allowed("_codecs.encode", codecs_encode)
for _module in ("copy_reg", "copyreg"):
    NUMPY_GLOBALS[(_module, "_reconstructor")] = Allowed(f"{_module}._reconstructor", reconstructor)
for _module in ("__builtin__", "builtins"):
    NUMPY_GLOBALS[(_module, "object")] = OBJECT
GPU_UNPICKLERS = {"CudaNdarray_unpickler", "GpuArray_unpickler"}


class AllowlistUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving globals only from the allowlist (see module docstring)."""

    def __init__(self, file: io.BufferedIOBase, path: str, persistent: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.persistent = persistent
        self.stubs: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[key]
        if module.startswith(STUB_PREFIXES) or module in ("theano", "pytensor", "aesara", "lasagne"):
            if name in GPU_UNPICKLERS:
                return self.stubs.setdefault(key, Allowed(f"{module}.{name}", gpu_unpickler))
            return self.stubs.setdefault(key, stub_class(module, name))
        raise UnsafeInputError(f"refused pickle global {module}.{name} (only numpy arrays and Theano/PyTensor/"
                               "Lasagne objects are read; nothing from the file is run)", path=self.path,
                               fix="Re-save the weights as numpy arrays (np.savez) or safetensors")

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent is None:
            raise UnsafeInputError("the pickle refers to persistent objects outside it", path=self.path,
                                   fix="Give a plain pickle or a theano.misc.pkl_utils zip")
        return self.persistent(pid)


# -- the pre-scan ------------------------------------------------------------------------------------------
PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
GETS = {"GET", "BINGET", "LONG_BINGET"}
FILLS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # change the object below their arguments
# What the unpickler keeps per opcode, at most (bytes and strings themselves are bounded by the file): a
# pointer for a shared object, a small object (str, int, float, list, dict, tuple), more for a set or an
# instance with its __dict__ (or an array's header), most for a global that may become a stub class.
SLOT, SMALL_OBJECT = 8, 64
OBJECT_BYTES = {**dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE", "BININT1", "DUP", *GETS), SLOT),
                **dict.fromkeys(("EMPTY_SET", "FROZENSET", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "BINPERSID",
                                 "PERSID"), 256),
                **dict.fromkeys(("GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"), 1024), "BUILD": 128}
ENTRY_BYTES = dict.fromkeys(("DICT", "SETITEM", "SETITEMS", "FROZENSET", "ADDITEMS"), 40)  # per key or value


def prescan(data: bytes, path: str) -> None:
    """Refuse a pickle that would make the unpickler allocate or nest beyond the budget, building nothing.

    The stack is simulated with each value's nesting depth (a container is one deeper than what it holds),
    using :mod:`pickletools`' description of every opcode's stack effect, and the memory the objects
    would take is estimated per opcode (:data:`OBJECT_BYTES`): a 10 MB file of ten million empty dicts or
    sets is refused, as :func:`~weightport.core.budget.check_computed_bytes` refuses whatever a reader
    builds beyond the file's own data.  Every argument is read from ``data`` by
    :func:`pickletools.genops`, so a string or bytes length beyond the file is refused as truncated and
    their declared total cannot exceed the file."""
    depths: list[int] = []
    marks: list[int] = []
    memo: list[int] = []  # the depth of each memo entry, -1 where none was stored
    count = objects = 0
    for count, (op, arg, _) in enumerate(pickletools.genops(data), 1):
        if count > MAX_ITEMS:
            raise BadInputError(f"the pickle holds more than {MAX_ITEMS} opcodes", path=path, fix=HOSTILE)
        name = op.name
        if name == "MARK":
            marks.append(len(depths))
        elif name == "POP" and marks and marks[-1] == len(depths):
            marks.pop()
        elif name in PUTS:
            index = len(memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= count:
                raise BadInputError(f"the pickle stores memo entry {index} at opcode {count} (beyond any memo "
                                    "it can fill)", path=path, fix=HOSTILE)
            memo.extend([-1] * (index + 1 - len(memo)))
            memo[index] = depths[-1]
            objects += 2 * SLOT
        elif name in GETS:
            if not 0 <= arg < len(memo) or memo[arg] < 0:
                raise BadInputError(f"the pickle fetches memo entry {arg}, which it never stored", path=path,
                                    fix=HOSTILE)
            depths.append(memo[arg])
            objects += SLOT
        elif name == "DUP":
            depths.append(depths[-1])
            objects += SLOT
        else:
            depth, items = stack_effect(op, depths, marks)
            depths.extend([depth] * len(op.stack_after))
            if depths and depths[-1] > MAX_NESTING:
                raise BadInputError(f"the pickle nests more than {MAX_NESTING} levels deep", path=path, fix=HOSTILE)
            made = op.stack_after and name not in FILLS
            objects += OBJECT_BYTES.get(name, SMALL_OBJECT if made else 0) + ENTRY_BYTES.get(name, SLOT) * items
        if objects > MAX_COMPUTED_BYTES:
            check_computed_bytes(objects, path, "the pickle's objects")


def stack_effect(op: pickletools.OpcodeInfo, depths: list[int], marks: list[int]) -> tuple[int, int]:
    """Pop what ``op`` takes from the simulated stack: the depth of what it pushes, how many items it took
    into a container (or gave a callable)."""
    before = op.stack_before
    taken: list[int] = []
    if pickletools.markobject in before:
        start = marks.pop()
        taken, depths[start:] = depths[start:], []
        before = before[:before.index(pickletools.markobject)]
    if len(before) > len(depths):
        raise IndexError("stack underflow")
    for _ in before:
        taken.append(depths.pop())
    if op.name in FILLS:
        target, items = taken[-1], taken[:-1]
        return max([target] + [1 + depth for depth in items]), len(items)
    return (1 + max(taken) if taken else 0), len(taken)


def safe_loads(data: bytes, path: str, persistent: Callable[[Any], Any] | None = None) -> Any:
    """Pre-scan, then unpickle ``data`` with the allowlist; every failure is a one-line :class:`BadInputError`."""
    built = BUILT.set([path, len(data), 0])
    try:
        prescan(data, path)
        return AllowlistUnpickler(io.BytesIO(data), path, persistent).load()
    except (BadInputError, UnsafeInputError) as error:
        raise error.with_path(path)
    except RecursionError:
        raise BadInputError("the pickle nests too deeply", path=path, fix=HOSTILE) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError) as error:
        raise BadInputError(f"not a readable pickle ({type(error).__name__}: {str(error)[:120]})", path=path,
                            fix="The file is truncated or not a pickle") from None
    finally:
        BUILT.reset(built)


def arrays_in(value: Any, path: str) -> list[tuple[str | None, np.ndarray]]:
    """Every array in an unpickled structure, in order, with the name it carries (a shared variable's
    name or a dict key).  Walked depth first without recursion (a stack of iterators, so a container of
    millions of references is never copied); shared sub-structures are visited once; at most
    :data:`~weightport.core.budget.MAX_ITEMS` visits and :data:`~weightport.core.budget.MAX_NESTING` levels."""
    found: list[tuple[str | None, np.ndarray]] = []
    seen: set[int] = set()
    pending: list[Iterator[tuple[Any, str | None]]] = [iter([(value, None)])]
    visits = 0
    while pending:
        step = next(pending[-1], None)
        if step is None:
            pending.pop()
            continue
        item, name = step
        visits += 1
        if visits > MAX_ITEMS:
            raise BadInputError(f"the pickle holds more than {MAX_ITEMS} objects", path=path,
                                fix="The file is hostile or not a weights file")
        if isinstance(item, ArrayStub):
            if item.array is None:
                raise BadInputError("an array in the pickle has no data", path=path, fix="The file is damaged")
            found.append((name, item.array))
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(pending) > MAX_NESTING:
            raise BadInputError(f"the pickle nests more than {MAX_NESTING} levels deep", path=path, fix=HOSTILE)
        pending.append(children_of(item, name))
    return found


def children_of(item: Any, name: str | None) -> Iterator[tuple[Any, str | None]]:
    """What :func:`arrays_in` visits inside ``item``, each with the name it carries: a dict's values under
    their keys, a list's or tuple's items, a shared variable's value (``container.storage[0]``) under its
    own name, else a stub's arguments."""
    if isinstance(item, dict):
        return ((sub, key if isinstance(key, str) else name) for key, sub in item.items())
    if isinstance(item, (list, tuple)):
        return ((sub, name) for sub in item)
    if not isinstance(item, Stub):
        return iter(())
    state = item.state if isinstance(item.state, dict) else {}
    own = state.get("name") if isinstance(state.get("name"), str) else name
    container = state.get("container")
    if isinstance(container, Stub) and isinstance(container.state, dict):
        storage = container.state.get("storage")
        if isinstance(storage, list) and storage:
            return iter([(storage[0], own)])
    return ((arg, own) for arg in item.args)
