"""Tensors weightport keeps as the source stores them, in the npz, raw and java targets' validators.

Real models exported by others hold tensors no layer maps: ONNX constants outside any layer (PaddleOCR's
layer norms, basic-pitch's Sqrt constant), a custom Keras layer under ``--keep-unknown`` (textgenrnn's
attention), a torch module's own parameters (Resemblyzer's similarity weight and bias).  The outputs
declare them with numbered axes (``K0``, ``X0X1``, ``A0``, ``k0 k1 k2``); the independent readers accept
those, and each such layer is checked by value: the array the reader reads from the output equals the
source file's stored tensor bit for bit (PASS, never unchecked).  The same output with one kept value
moved by one float32 ulp with plain numpy (the npz rewritten, or the bytes of weights.bin and their SHA-256
in the manifest) fails naming the layer.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import fixture_path, require
from tests.test_validate_plain_targets import by_status, edit_npz, edit_raw, manifest_of

pytestmark = pytest.mark.requires("onnxruntime")

REAL = {  # name: (source, extra options, the kept layer the tamper test changes)
    "paddle_rec": ("real/onnx/paddle_ppocrv4_rec.onnx", (), "layer_norm_43.w_0"),
    "basic_pitch": ("real/onnx/tf2onnx_basic_pitch_nmp.onnx", (),
                    "model_1_cq_t2010v2_1_Sqrt_model_1_cq_t2010v2_1_Sqrt"),
    "textgenrnn": ("real/keras/textgenrnn_weights.hdf5", ("--keep-unknown",), "attention"),
    "resemblyzer": ("real/torch/fetched/resemblyzer_pretrained.pt",
                    ("--arch", fixture_path("real/torch/resemblyzer_encoder.py") + ":SpeakerEncoder",
                     "--input-shape", "160,40"), ""),
}
KEPT = ("constant", "custom", "other")
# Resemblyzer's 3-layer LSTM: raw and java write one RNN layer at a time (convert refuses, exit 2), and the
# torch source's RNN oracle runs Keras kernels only: the one genuine gap of its npz report.
CASES = [(name, to) for name in REAL for to in ("npz", "raw", "java") if name != "resemblyzer" or to == "npz"]
GENUINE_GAPS = {"resemblyzer": {"lstm": "RNN check runs on Keras"}}


def convert(run_cli, tmp_path, name: str, to: str) -> tuple[str, tuple[str, ...]]:
    path, extra, _ = REAL[name]
    if not os.path.exists(fixture_path(path)):
        pytest.skip(f"environment: {path} is not fetched here")
    if path.endswith((".onnx",)):
        require("onnx")
    elif path.endswith(".pt"):
        require("torch")
    else:
        require("tensorflow")
    out = str(tmp_path / (name + (".npz" if to == "npz" else f".{to}")))
    code, _, err = run_cli("convert", fixture_path(path), "-o", out, "--to", to, *extra)
    assert code == 0, err
    return out, extra


def validate(run_cli, name: str, out: str, extra: tuple[str, ...]) -> tuple[int, dict]:
    code, stdout, err = run_cli("validate", fixture_path(REAL[name][0]), out, "--json", *extra)
    assert code in (0, 1, 3), err
    return code, json.loads(stdout)


def kept_entries(out: str, to: str) -> list[dict]:
    """The output's own entries (sidecar or manifest) for kept tensors: kind constant, custom or other."""
    if to == "npz":
        with open(out + ".json", encoding="utf-8") as handle:
            arrays = json.load(handle)["arrays"]
        return [dict(entry, name=key) for key, entry in arrays.items() if entry["kind"] in KEPT]
    with open(manifest_of(out), encoding="utf-8") as handle:
        return [entry for entry in json.load(handle)["tensors"] if entry.get("kind") in KEPT]


def one_ulp_up(a: np.ndarray) -> np.ndarray:
    """The first value moved to the next float32 up: a change no tolerance would see."""
    flat = a.reshape(-1).copy()
    flat[0] = np.nextafter(flat[0], np.float32(np.inf), dtype=np.float32)
    return flat.reshape(a.shape)


@pytest.mark.parametrize("name,to", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_kept_tensors_validate_by_value(run_cli, tmp_path, name, to):
    """A correct port validates: every kept layer PASSes bit for bit, none is unchecked; only the listed
    genuine gaps leave the report INCOMPLETE."""
    out, extra = convert(run_cli, tmp_path, name, to)
    assert kept_entries(out, to), "the output declares no kept tensor"
    code, report = validate(run_cli, name, out, extra)
    assert not by_status(report, "fail"), json.dumps(by_status(report, "fail"), indent=1)
    kept = [c for c in report["checks"] if c["check"] == "layer" and c["kind"] in KEPT]
    assert kept and all(c["status"] == "pass" and "bit for bit" in c["reason"] for c in kept), kept
    gaps = {g["layer"]: g["reason"] for g in report["unchecked_layers"]}
    expected = GENUINE_GAPS.get(name, {})
    assert set(gaps) == set(expected) and all(expected[k] in gaps[k] for k in gaps), gaps
    assert (code, report["status"]) == ((3, "incomplete") if expected else (0, "pass"))


@pytest.mark.parametrize("name,to", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_a_kept_tensor_changed_by_one_ulp_fails_naming_its_layer(run_cli, tmp_path, name, to):
    out, extra = convert(run_cli, tmp_path, name, to)
    layer = REAL[name][2]
    entry = next(e for e in kept_entries(out, to) if e["layer"] == layer and e["dtype"] == "float32")
    if to == "npz":
        edit_npz(out, entry["name"], one_ulp_up)
    else:
        edit_raw(out, entry["name"], one_ulp_up)
    code, report = validate(run_cli, name, out, extra)
    failed = by_status(report, "fail")
    assert code == 1 and report["status"] == "fail", json.dumps(report, indent=1)
    assert [c["layer"] for c in failed] == [layer], failed
    assert "1 of" in failed[0]["reason"] and "flat index 0" in failed[0]["reason"], failed[0]


def test_numbered_axes_read_apart_from_unit_axes():
    """The reader's own parse: a kept tensor's numbered axes, compact or spaced, and unit axes still units."""
    from weightport.formats.numpy.target_check import parse_axes
    assert parse_axes("K0K1K2") == parse_axes("k0 k1 k2") == (("k0",), ("k1",), ("k2",))
    assert parse_axes("CX0X1") == (("c",), ("x0",), ("x1",))
    assert parse_axes("A0") == (("a0",),)
    assert parse_axes("C11") == (("c",), (), ())
    assert parse_axes("O1HW") == (("o",), (), ("h",), ("w",))
    assert parse_axes("(IM)1HW") == (("i", "m"), (), ("h",), ("w",))
