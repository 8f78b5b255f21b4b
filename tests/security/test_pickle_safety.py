"""Hostile pickles are refused with exit 2 and one line naming what was refused; nothing runs
(the canary file a payload would create never appears) and no output is written."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from tests.conftest import ROOT, fixture_path


def proto0_call(module: str, name: str, arg: str) -> bytes:
    return f"c{module}\n{name}\n(S'{arg}'\ntR.".encode()


def short_unicode(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def stack_global(module: str, name: str, arg: str, via_memo: bool = False) -> bytes:
    body = b"\x80\x04" + short_unicode(module) + b"\x94" + short_unicode(name) + b"\x94"
    if via_memo:  # push both names again from the memo before STACK_GLOBAL
        body += b"h\x00h\x01"
    body += b"\x93" + short_unicode(arg) + b"\x85R."
    return body


def billion_laughs(levels: int = 40, width: int = 10) -> bytes:
    """Each level is a list of `width` references to the previous one: 10^40 leaves if walked naively."""
    out = bytearray(b"\x80\x02]q\x00")
    for level in range(levels):
        out += b"(" + b"h" + bytes([level]) * 1 + b"".join(b"h" + bytes([level]) for _ in range(width - 1)) + b"l"
        out += b"q" + bytes([level + 1])
    return bytes(out) + b"."


class HugeArray:
    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10 ** 6, 10 ** 6), np.dtype("f4"), False, b"\0" * 16))


def cases(canary: str) -> dict[str, tuple[bytes, str]]:
    command = f"touch {canary}"
    return {
        "os.system via GLOBAL": (proto0_call("os", "system", command), "os.system"),
        "posix.system via GLOBAL": (proto0_call("posix", "system", command), "posix.system"),
        "os.system via STACK_GLOBAL": (stack_global("os", "system", command), "os.system"),
        "os.system via memo indirection": (stack_global("os", "system", command, via_memo=True), "os.system"),
        "eval": (proto0_call("__builtin__", "eval", f"__import__('os').system('{command}')"), "__builtin__.eval"),
        "exec": (proto0_call("builtins", "exec", f"import os; os.system('{command}')"), "builtins.exec"),
        "getattr gadget": (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'"
                           + command.encode() + b"'\ntR.", "builtins.getattr"),
        "pkgutil.resolve_name": (b"cpkgutil\nresolve_name\n(S'os:system'\ntR(S'" + command.encode() + b"'\ntR.",
                                 "pkgutil.resolve_name"),
        "importlib": (proto0_call("importlib", "import_module", "os"), "importlib.import_module"),
        "subprocess": (b"csubprocess\ncall\n((S'touch'\nS'" + canary.encode() + b"'\nltR.", "subprocess.call"),
        "numpy.load gadget": (proto0_call("numpy", "load", canary), "numpy.load"),
        "theano lookalike function outside the stubs": (proto0_call("theano_evil", "run", command), "theano_evil.run"),
        "object array": (pickle.dumps(np.array([1, "x"], dtype=object), protocol=2), "object"),
        "array declaring 10^12 elements": (pickle.dumps(HugeArray(), protocol=2), "10^12"),
        "billion laughs": (billion_laughs(), "billion"),
        "truncated": (open(fixture_path("theano", "theano_cnn.values.p2.pkl"), "rb").read()[:300], "truncated"),
        "empty": (b"", "empty"),
    }


NAMES = list(cases("x"))


@pytest.mark.parametrize("name", NAMES)
def test_hostile_pickle_is_refused(run_cli, tmp_path, name):
    canary = tmp_path / "CANARY"
    data, needle = cases(str(canary))[name]
    source = tmp_path / "evil.pkl"
    source.write_bytes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, err = run_cli("convert", source, "-o", out_dir / "model.safetensors", "--source-semantics",
                                "convolution")
    assert not canary.exists(), "the payload ran"
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err and "evil.pkl" in err
    if "." in needle and needle[0].isalpha() and " " not in needle:
        assert f"refused pickle global {needle}" in err
    elif needle == "object":
        assert "object" in err
    elif needle == "10^12":
        assert "declares" in err
    elif needle == "billion":  # walked once, sharing-aware: found to hold no weights, quickly
        assert "no numeric arrays" in err
    assert list(out_dir.iterdir()) == []
    assert source.read_bytes() == data


def test_no_pickle_load_anywhere_in_the_project():
    checked = 0
    for folder in ("converter", "formats"):
        for directory, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in (n for n in names if n.endswith(".py")):
                text = open(os.path.join(directory, name), encoding="utf-8").read()
                assert "pickle.load(" not in text and "pickle.loads(" not in text, name
                assert "allow_pickle=True" not in text and "weights_only=False" not in text, name
                checked += 1
    assert checked > 40  # every module, the framework folders included


def test_allowlist_reads_real_theano_objects_without_theano():
    import sys
    from weightport.formats.theano.reader import read_arrays
    arrays = read_arrays(fixture_path("theano", "theano_cnn.shared.p2.pkl"))
    assert [name for name, _ in arrays][:2] == ["conv1.W", "conv1.b"]
    assert "theano" not in sys.modules
