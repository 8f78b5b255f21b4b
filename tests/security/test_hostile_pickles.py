"""Hostile corpus, round 2 (issue 20), for the pickle readers: Theano/Lasagne pickles, ``np.savez`` and
``pkl_utils`` zips (the allowlist unpickler) and PyTorch ``.pt`` files.

Every file is regenerated here by a few lines of code (pickle with ``__reduce__`` stand-ins, torch.save,
zip archives written byte by byte); nothing large is vendored.  Each one is refused as
docs/security.md promises (:func:`tests.security.hostile.assert_refused`: the real CLI in a child, exit
2, one line naming the file, nothing written, the source untouched, peak RSS and time bounded), or, when
it is a valid file, read exactly.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import fixture_path
from tests.security.hostile import TIME_BOUND, assert_refused, run_weightport

DEEP = 100_000      # far beyond the C stack and Python's recursion limit
RECURSIVE = 950     # unpickles fine, then recursed into by a naive walk


class Reduce:
    """Pickles as ``callable(*args)`` followed, when ``state`` is given, by a BUILD with ``state``."""

    def __init__(self, callable, args, *state):
        self.reduced = (callable, args) + state

    def __reduce__(self):
        return self.reduced


def reconstructed(shape, dtype, data: bytes, fortran: bool = False) -> Reduce:
    """An array as numpy pickles it: ``_reconstruct(ndarray, (0,), b'b')`` then BUILD with its state."""
    from numpy._core.multiarray import _reconstruct
    return Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, data))


def write_pickle(path: Path, value, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    return path


def report(name: str, source: Path, outcome) -> None:
    size = source.stat().st_size if source.is_file() else 0
    print(f"{name} ({size} bytes): refused in {outcome.seconds:.2f} s, peak RSS {outcome.peak_rss / 2**20:.0f} MiB")


def refused(name: str, source: Path, tmp_path: Path, must_mention: str | None = None, **options):
    outcome = assert_refused(source, tmp_path, must_mention=must_mention, **options)
    report(name, source, outcome)
    return outcome


# -- memory-unsafe pickles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["V8", "f8"])
def test_dtype_build_with_a_str_in_fields_is_refused(tmp_path, base):
    """BUILD on the ``numpy.dtype`` result with a str where a field's dtype belongs: copying an array of
    that dtype called a NULL function pointer (a segfault, with ``V8``)."""
    dtype = Reduce(np.dtype, (base, False, True), (3, "|", None, ("a",), {"a": ("x", 0)}, 8, 1, 16))
    source = write_pickle(tmp_path / "fields.pkl", [reconstructed((2,), dtype, b"\0" * 16)])
    refused(f"dtype {base} fields segfault", source, tmp_path, must_mention="dtype")
    refused(f"dtype {base} fields segfault (inspect)", source, tmp_path, command="inspect")


@pytest.mark.parametrize("spec", ["V8", "f8", "S8", "U2", "M8[s]", "2f8", "f4,f4", "O"])
def test_dtype_that_is_not_plain_numeric_is_refused(tmp_path, spec):
    """Only plain numbers (``kind in 'biufc'``): no void, string, datetime, subarray, structured or object."""
    source = write_pickle(tmp_path / "dtype.pkl", [reconstructed((1,), Reduce(np.dtype, (spec, False, True)),
                                                                 b"\0" * 8)])
    if spec == "f8":  # the plain one is read
        assert run_weightport("inspect", source).code == 0
        return
    refused(f"dtype {spec}", source, tmp_path, must_mention="dtype")


def test_structured_dtype_by_build_is_refused(tmp_path):
    """BUILD on a dtype, not on a stand-in: a plain ``f8`` given two float32 fields."""
    fields = {"a": (Reduce(np.dtype, ("f4", False, True)), 0), "b": (Reduce(np.dtype, ("f4", False, True)), 4)}
    dtype = Reduce(np.dtype, ("f8", False, True), (3, "|", None, ("a", "b"), fields, 8, 1, 16))
    source = write_pickle(tmp_path / "structured.pkl", [reconstructed((2,), dtype, b"\0" * 16)])
    refused("structured dtype by BUILD", source, tmp_path, must_mention="dtype")


@pytest.mark.parametrize("case", ["uninitialised", "zero-stride view", "object array"])
def test_ndarray_is_never_called(tmp_path, case):
    """``numpy.ndarray`` resolved to the real class, so REDUCE made arrays the file holds no bytes for:
    uninitialised memory (process memory in the output), a 3 GiB zero-stride view of one byte, an
    object array of NULL pointers."""
    args = {"uninitialised": ((1 << 20,), "f8"),
            "zero-stride view": ((3 << 30,), "u1", b"\0", 0, (0,)),
            "object array": ((4,), "O")}[case]
    source = write_pickle(tmp_path / "ndarray.pkl", [Reduce(np.ndarray, args)], protocol=4)
    assert source.stat().st_size < 80
    refused(f"numpy.ndarray {case}", source, tmp_path, must_mention="numpy.ndarray")


def test_build_on_a_real_array_is_refused(tmp_path):
    """BUILD on the array ``_frombuffer`` returns (protocol 5): numpy's own __setstate__ ran with the file's
    state.  Only our stand-ins take state."""
    from numpy._core.numeric import _frombuffer
    array = Reduce(_frombuffer, (bytearray(8), np.dtype("f4"), (2,), "C"),
                   (1, (2,), np.dtype("f4"), False, b"\1" * 8))
    source = write_pickle(tmp_path / "build.pkl", [array], protocol=5)
    refused("BUILD on an array", source, tmp_path)


def state_of_allowlist():
    """What a file could change in the allowlist's module state: every global's attributes."""
    from weightport.formats.theano import allowlist

    def snapshot(value):
        return (getattr(value, "__defaults__", None), getattr(value, "__kwdefaults__", None),
                dict(getattr(value, "__dict__", {})), repr(value))
    return ({key: snapshot(value) for key, value in allowlist.NUMPY_GLOBALS.items()},
            allowlist.make_dtype.__defaults__, allowlist.reconstruct.__defaults__)


def build_on_global(module: str, name: str, state) -> bytes:
    """GLOBAL module.name, then BUILD with ``state`` on the global itself (setattr on a function)."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(state, protocol=2)[2:-1] + b"b."


def test_globals_cannot_be_changed_by_a_file(tmp_path):
    """A BUILD with slot state on an allowlisted function set ``make_dtype.__defaults__`` (and any other
    attribute) for the whole process: every later read, in every thread, used them."""
    from weightport.core.errors import BadInputError
    from weightport.formats.theano import allowlist
    from weightport.formats.theano.reader import read_arrays
    before = state_of_allowlist()
    saved = {key: (getattr(value, "__defaults__", None), dict(getattr(value, "__dict__", {})))
             for key, value in allowlist.NUMPY_GLOBALS.items()}
    saved_functions = {f: (f.__defaults__, dict(f.__dict__)) for f in (allowlist.make_dtype, allowlist.reconstruct)}
    try:
        for module, name in list(allowlist.NUMPY_GLOBALS) + [("theano.tensor.sharedvar", "TensorSharedVariable")]:
            source = tmp_path / f"{module}.{name}.pkl"
            source.write_bytes(build_on_global(module, name, (None, {"__defaults__": ("O", True, True),
                                                                     "hijacked": 1})))
            with pytest.raises(BadInputError) as raised:
                read_arrays(str(source))
            assert str(source) in str(raised.value)
            assert state_of_allowlist() == before, f"{module}.{name} changed the allowlist"
    finally:  # undo what the unfixed reader let the file do, for the rest of the session
        for key, (defaults, attributes) in saved.items():
            value = allowlist.NUMPY_GLOBALS[key]
            if hasattr(value, "__defaults__"):
                value.__defaults__ = defaults
            if hasattr(value, "__dict__") and not isinstance(value, type):
                value.__dict__.clear()
                value.__dict__.update(attributes)
        for function, (defaults, attributes) in saved_functions.items():
            function.__defaults__ = defaults
            function.__dict__.clear()
            function.__dict__.update(attributes)
    source = tmp_path / "defaults.pkl"
    source.write_bytes(build_on_global("numpy", "dtype", (None, {"__defaults__": (True, True)})))
    refused("BUILD on numpy.dtype's replacement", source, tmp_path)


# -- memory amplification and depth -------------------------------------------------------------------------

def test_huge_memo_index_is_refused(tmp_path):
    """LONG_BINPUT 2**27: the C unpickler grew its memo table to 2 GiB for a 9-byte file."""
    source = tmp_path / "memo.pkl"
    source.write_bytes(b"\x80\x02Nr" + struct.pack("<I", 1 << 27) + b".")
    assert source.stat().st_size == 9
    refused("LONG_BINPUT 2**27", source, tmp_path, must_mention="memo")


def test_arrays_built_from_one_memoised_bytes_object_are_refused(tmp_path):
    """200 arrays whose state refers (BINGET) to one 8 MiB bytes object: 1.6 GiB of copies from 8 MiB."""
    data = bytes(8 << 20)
    source = write_pickle(tmp_path / "shared.pkl", [reconstructed((2 << 20,), np.dtype("f4"), data)
                                                    for _ in range(200)])
    assert source.stat().st_size < (8 << 20) + 20_000
    refused("200 arrays from one memoised bytes", source, tmp_path, must_mention="declares")


def test_one_array_referred_to_half_a_million_times_is_refused(tmp_path):
    """A 128 KiB array in a list of 500,000 memo references: 64 GiB to write from a 1.2 MB file."""
    array = np.zeros(1 << 15, np.float32)
    source = write_pickle(tmp_path / "repeated.pkl", [array] * 500_000)
    assert source.stat().st_size < 1_500_000
    refused("one array referred to 500,000 times", source, tmp_path, must_mention="declares")


@pytest.mark.parametrize("kind", ["dicts", "sets", "stub classes"])
def test_object_flood_is_refused(tmp_path, kind):
    """One opcode byte per object: ten million empty dicts (1.3 GiB) or sets (2 GiB) from a 10 MB file; a
    GLOBAL per stand-in class (about 1 KB each)."""
    if kind == "stub classes":
        body = b"".join(b"ctheano.x\nC%d\n0" % k for k in range(1_000_000)) + b"N"
    else:
        body = b"(" + (b"}" if kind == "dicts" else b"\x8f") * 10_000_000 + b"l"
    source = tmp_path / "flood.pkl"
    source.write_bytes(b"\x80\x04" + body + b".")
    refused(f"object flood: {kind}", source, tmp_path, must_mention="compute")


@pytest.mark.parametrize("depth", [RECURSIVE, DEEP])
@pytest.mark.parametrize("shape", ["lists", "tuples", "dicts", "marks"])
def test_deep_pickle_is_refused(tmp_path, shape, depth):
    if shape == "lists":     # [[[...]]]: EMPTY_LIST x depth, APPEND x depth - 1
        body = b"]" * depth + b"a" * (depth - 1)
    elif shape == "tuples":  # ((((),),),): TUPLE1 x depth
        body = b")" + b"\x85" * depth
    elif shape == "dicts":   # {'k': {'k': ...}}: the key pushed once, re-fetched from the memo
        body = b"\x8c\x01k\x94" + b"}h\x00" * depth + b"N" + b"s" * depth
    else:                    # MARK ... MARK then LIST x depth
        body = b"(" * depth + b"l" * depth
    source = tmp_path / "deep.pkl"
    source.write_bytes(b"\x80\x04" + body + b".")
    refused(f"{depth} nested {shape}", source, tmp_path, must_mention="nest")


# -- archives -----------------------------------------------------------------------------------------------

def raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]], listed: int = 1) -> Path:
    """A zip written byte by byte: members (name, payload, method, crc32, declared size) as given, each
    listed ``listed`` times in the central directory (the copies share one local header and payload)."""
    body, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(payload), size)
        header = struct.pack("<HH", len(name), 0) + name.encode()
        central += (b"PK\x01\x02\x14\x00" + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, len(body))
                    + name.encode()) * listed
        body += b"PK\x03\x04" + fields + header + payload
    count = len(members) * listed
    path.write_bytes(bytes(body + central) + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count,
                                                                          len(central), len(body), 0))
    return path


def deflated(prefix: bytes, zeros: int, level: int = 9, chunk: int = 1 << 26) -> tuple[bytes, int]:
    """Raw deflate of ``prefix`` + ``zeros`` zero bytes and its crc32, in one chunk's compression time: after
    a full flush the compressor starts afresh, so every whole chunk of zeros compresses to the same bytes."""
    assert zeros % chunk == 0
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(zeros // chunk):
        crc = zlib.crc32(bytes(chunk), crc)
    return head + block * (zeros // chunk) + compressor.flush(), crc


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_savez_members_each_under_the_gate_but_huge_in_total_are_refused(tmp_path):
    """One 128 MiB member (compressed 229:1, as ordinary as a member gets) listed 16 times: each passes
    the per-member check, together they declare 2 GiB from a 600 KB archive."""
    header = npy_header((32 << 20,))
    payload, crc = deflated(header, 128 << 20, level=1, chunk=1 << 24)
    source = raw_zip(tmp_path / "many.npz", [("arr_0.npy", payload, 8, crc, len(header) + (128 << 20))], listed=16)
    assert source.stat().st_size < 1_000_000
    refused("savez 16 x 128 MiB members", source, tmp_path, must_mention="compressed")


def test_savez_zip_bomb_member_is_refused(tmp_path):
    """1.5 GiB of float32 zeros at zlib's best ratio (about 1030:1) in a 1.5 MB archive."""
    header = npy_header((3 << 27,))
    payload, crc = deflated(header, 3 << 29)
    source = raw_zip(tmp_path / "bomb.npz", [("arr_0.npy", payload, 8, crc, len(header) + (3 << 29))])
    refused("savez zip bomb member", source, tmp_path, must_mention="compressed")


def test_savez_member_declaring_more_than_it_holds_is_refused(tmp_path):
    """An .npy header declaring 4 GiB in a 1 KB stored member."""
    data = npy_header((1 << 30,)) + b"\0" * 1024
    source = raw_zip(tmp_path / "short.npz", [("arr_0.npy", data, 0, zlib.crc32(data), len(data))])
    refused("savez member declaring 4 GiB", source, tmp_path, must_mention="declares")


def test_pkl_utils_zip_with_a_bomb_pickle_is_refused(tmp_path):
    """A pkl_utils zip whose 'pkl' member is 256 MiB of zeros deflated 1000:1."""
    payload, crc = deflated(b"\x80\x02", 1 << 28)
    source = raw_zip(tmp_path / "bomb.zip", [("pkl", payload, 8, crc, 2 + (1 << 28))])
    refused("pkl_utils zip bomb", source, tmp_path, must_mention="compressed")


# -- non-regular inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pkl", ".npz", ".pt"])
def test_dev_zero_is_refused(tmp_path, suffix):
    """``/dev/zero`` under a pickle/zip/.pt name: zipfile.is_zipfile and read() never ended."""
    source = tmp_path / f"zero{suffix}"
    source.symlink_to("/dev/zero")
    refused(f"/dev/zero as {suffix}", source, tmp_path, must_mention="not a regular file")


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_fifo_is_refused_without_blocking(tmp_path, suffix):
    source = tmp_path / f"fifo{suffix}"
    os.mkfifo(source)
    refused(f"FIFO as {suffix}", source, tmp_path, must_mention="not a regular file")


READ_IN_CHILD = """
import sys
from weightport.core.errors import WeightportError
from weightport.core.options import ReadOptions
from weightport.formats.{module} import read, sniff
try:
    sniff(sys.argv[1])
    print("sniffed")
except WeightportError as error:
    print(type(error).__name__, error)
try:
    read(sys.argv[1], ReadOptions())
    print("read")
except WeightportError as error:
    print(type(error).__name__, error)
"""


@pytest.mark.parametrize("module", ["theano.reader", "torch.pt_reader"])
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_readers_refuse_non_regular_files_themselves(tmp_path, module, kind):
    """The readers' own sniff and read refuse a device or FIFO (they are reached without the CLI too)."""
    path = "/dev/zero" if kind == "/dev/zero" else str(tmp_path / "fifo")
    if kind == "fifo":
        os.mkfifo(path)
    done = subprocess.run([sys.executable, "-c", READ_IN_CHILD.format(module=module), path], capture_output=True,
                          text=True, timeout=TIME_BOUND)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stdout + done.stderr[-2000:]
    assert all(line.startswith("UsageError") and path in line and "not a regular file" in line for line in lines), lines


# -- PyTorch .pt ----------------------------------------------------------------------------------------------

def test_pt_zero_stride_expand_is_refused(tmp_path):
    """torch.save keeps an expanded tensor's one-element storage: 4 GB of float32 declared by a 1 KB file."""
    import torch
    source = tmp_path / "expand.pt"
    torch.save({"fc.weight": torch.zeros(1).expand(10 ** 9)}, source)
    assert source.stat().st_size < 4096
    refused("torch.zeros(1).expand(10**9)", source, tmp_path, must_mention="declares")
    refused("torch.zeros(1).expand(10**9) (inspect)", source, tmp_path, command="inspect")


def test_pt_overlapping_strides_are_refused(tmp_path):
    """A (2**16, 2**16) view with strides (1, 1) of a 2**17-element storage: 16 GiB declared, 512 KiB stored."""
    import torch
    source = tmp_path / "overlap.pt"
    torch.save({"fc.weight": torch.zeros(1 << 17).as_strided((1 << 16, 1 << 16), (1, 1))}, source)
    refused("overlapping strides", source, tmp_path, must_mention="declares")


def pt_members(tmp_path: Path) -> list[tuple[str, bytes]]:
    import torch
    torch.save({"fc.weight": torch.zeros(4)}, tmp_path / "small.pt")
    with zipfile.ZipFile(tmp_path / "small.pt") as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_pt_deflated_storage_bomb_is_refused(tmp_path, declared):
    """The storage member deflated: 1.5 GiB of zeros in 1.5 MB (declared as it is, or as 3.9 GiB)."""
    payload, crc = deflated(b"", 3 << 29)
    size = (3 << 29) if declared == "honest" else 0xF0000000
    members = [(name, payload, 8, crc, size) if name.endswith("data/0") else (name, data, 0, zlib.crc32(data),
                                                                                 len(data))
               for name, data in pt_members(tmp_path)]
    source = raw_zip(tmp_path / "bomb.pt", members)
    refused(f"deflated .pt storage ({declared} size)", source, tmp_path, must_mention="compressed")


@pytest.mark.parametrize("content", [b"", b"PK\x05\x06" + b"\0" * 18, b"\x80\x02}q\x00."])
def test_empty_pt_is_refused(tmp_path, content):
    source = tmp_path / "empty.pt"
    source.write_bytes(content)
    refused(f"empty .pt {content[:4]!r}", source, tmp_path)
    refused(f"empty .pt {content[:4]!r} (inspect)", source, tmp_path, command="inspect")


def test_pt_with_non_tensor_layouts_is_refused(tmp_path):
    """A sparse tensor declaring 10**12 elements with one value: loadable with weights_only, not an array."""
    import torch
    source = tmp_path / "sparse.pt"
    sparse = torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long), torch.ones(1), (10 ** 6, 10 ** 6))
    torch.save({"fc.weight": sparse}, source)
    refused("sparse .pt", source, tmp_path)


# -- valid files are read exactly ---------------------------------------------------------------------------

VALUES = [np.arange(6, dtype=">f4").reshape(2, 3), np.array([True, False]), np.arange(4, dtype=np.int8),
          np.array([1 + 2j], np.complex64), np.arange(3, dtype=np.float16), np.asfortranarray(np.eye(3)),
          np.arange(4, dtype="<u2"), np.float64(2.5)]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_numeric_pickles_are_read_exactly(tmp_path, protocol):
    from weightport.formats.theano.reader import read_arrays
    source = write_pickle(tmp_path / "ok.pkl", {"values": VALUES, "named": {"fc.W": VALUES[0]}}, protocol)
    arrays = read_arrays(str(source))
    expected = [v for v in VALUES if isinstance(v, np.ndarray)] + [VALUES[0]]
    assert len(arrays) == len(expected)
    for (_, array), value in zip(arrays, expected):
        assert array.dtype == value.dtype and array.shape == value.shape and np.array_equal(array, value)


def test_theano_fixtures_read_as_before():
    """The real Theano 1.0.5 files (py2 BINSTRING pickles, shared variables, Lasagne lists, pkl_utils zips,
    savez): names, dtypes, shapes and bytes as the reader has always returned them."""
    from weightport.formats.theano.reader import read_arrays
    folder = Path(fixture_path("theano"))
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pkl", ".zip", ".npz"))
    assert len(files) >= 30
    for path in files:
        arrays = read_arrays(str(path))
        assert arrays, path
        for _, array in arrays:
            assert array.dtype.kind in "biufc" and array.dtype.fields is None
    shared = read_arrays(str(folder / "theano_cnn.shared.p2.pkl"))
    py2 = read_arrays(str(folder / "theano_cnn.py2.pkl"))
    savez = read_arrays(str(folder / "theano_cnn.savez.npz"))
    zipped = read_arrays(str(folder / "theano_cnn.pkl_utils.zip"))
    assert [n for n, _ in shared][:2] == ["conv1.W", "conv1.b"]
    for other in (py2, savez, zipped):
        assert len(other) == len(shared)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(other, shared))


def test_savez_compressed_under_the_budget_is_read(tmp_path):
    from weightport.formats.theano.reader import read_arrays
    values = [np.zeros((256, 256), np.float32), np.arange(1000, dtype=np.float64)]
    np.savez_compressed(tmp_path / "ok.npz", *values)
    arrays = read_arrays(str(tmp_path / "ok.npz"))
    assert [n for n, _ in arrays] == ["arr_0", "arr_1"]
    assert all(np.array_equal(a, v) and a.dtype == v.dtype for (_, a), v in zip(arrays, values))


def test_pt_small_expand_shared_storage_and_deflate_convert_exactly(tmp_path):
    """A small expanded bias, weights sharing one storage (tied), a slice of a larger storage, and the
    same file deflated: valid, and converted value for value."""
    import torch
    base = torch.arange(12, dtype=torch.float32)
    state = collections.OrderedDict([("fc.weight", base.view(3, 4)), ("fc.bias", torch.ones(1).expand(3)),
                                     ("out.weight", base.view(3, 4)), ("head.weight", base[4:8].view(1, 4))])
    source = tmp_path / "ok.pt"
    torch.save(state, source)
    deflated_source = tmp_path / "ok_deflated.pt"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(deflated_source, "w", zipfile.ZIP_DEFLATED) as out:
        for name in archive.namelist():
            out.writestr(name, archive.read(name))
    for path in (source, deflated_source):
        target = tmp_path / f"{path.stem}.safetensors"
        outcome = run_weightport("convert", path, "-o", target)
        assert outcome.code == 0, outcome.stderr
        written = load_file(str(target))
        assert sorted(written) == sorted(state)
        for key, value in state.items():
            assert np.array_equal(written[key], value.numpy()), key
