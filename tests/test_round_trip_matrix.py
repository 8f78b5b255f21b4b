"""The round-trip matrix: every reader fixture x the PyTorch and ONNX writers.

For each fixture (Keras 3, Keras 1/2 on Theano, tf.keras 2, Theano pickles, ONNX) and each writer:

* the written file, loaded by its framework (PyTorch ``load_state_dict(strict=True)`` into the model's
  module, onnxruntime on the written graph), reproduces the output the *source* framework recorded
  (rtol 1e-5);
* A -> B -> A: the written file converted back gives tensors bit-identical to a direct conversion (both
  as ``.npz``, canonical keys and layouts, which also holds what torch.nn cannot run).

Refusals are asserted, never inferred: a cell a target cannot hold (torch.nn.GRU has no reset_after=False,
torch.nn.LSTM/GRU no hard_sigmoid gates) is listed in EXPECTED_REFUSALS with the reason it must print, and
the test checks exit 2, that one line and that no file was left. A refusal not listed fails, and so does a
listed cell that converts (remove its row: the table says what the code does); a written file must run.
READ_BACK_REFUSALS lists, the same way, the written files weightport refuses to read back.
The Keras, Theano, npz/scipy and Java columns need a hand-built model per architecture and live in
test_keras_writer, test_onnx_reader, test_theano_target, test_npz_target and test_raw_target.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FIXTURES, fixture_path, optional_module

torch = optional_module("torch")
ort = optional_module("onnxruntime")
pytestmark = pytest.mark.requires("torch", "onnxruntime")

SOURCE_PATTERNS = {"keras3": "{}.h5", "keras_theano": "{}.h5", "tf_keras2": "{}.h5", "theano": "{}.shared.p4.pkl",
                   "onnx": "{}.onnx"}
TORCH = (".safetensors", ".pt")
SUFFIXES = TORCH + (".onnx",)


def cells(fixture: str, suffixes: tuple[str, ...], reason: str) -> dict[tuple[str, str], str]:
    return {(fixture, suffix): reason for suffix in suffixes}


RESET_BEFORE = ("was trained with reset_after=False, which torch.nn.GRU cannot compute (it applies the reset gate "
                "after the recurrent matmul)")


def hard_sigmoid(kind: str) -> str:
    return f"uses recurrent_activation='hard_sigmoid', which torch.nn.{kind} cannot compute (its gates are sigmoid)"


# (fixture, written suffix) -> what the one-line refusal (exit 2) must say. ONNX computes both (GRU
# linear_before_reset=0, HardSigmoid gates): only the torch cells refuse.
EXPECTED_REFUSALS: dict[tuple[str, str], str] = {
    **cells("keras3/rnn_hard_sigmoid", TORCH, f"LSTM layer 'lstm' {hard_sigmoid('LSTM')}"),
    **cells("keras_theano/k1_gru", TORCH, f"GRU layer 'gru' {RESET_BEFORE} and {hard_sigmoid('GRU')}"),
    **cells("keras_theano/k1_lstm", TORCH, f"LSTM layer 'lstm' {hard_sigmoid('LSTM')}"),
    **cells("keras_theano/k2_gru_reset_before", TORCH, f"GRU layer 'gru' {RESET_BEFORE}"),
    **cells("tf_keras2/gru_reset_before", TORCH, f"GRU layer 'gru_2' {RESET_BEFORE}"),
    **cells("onnx/gru_reset_before", TORCH, f"GRU layer 'gru_reset_before' {RESET_BEFORE}"),
}

# (fixture, written suffix) -> what reading the written file back must refuse with (exit 2, one line).
NON_DEFAULT = "uses non-default activations, clip or input_forget"
READ_BACK_REFUSALS: dict[tuple[str, str], str] = {
    ("keras3/rnn_hard_sigmoid", ".onnx"): f"LSTM '/lstm/LSTM' {NON_DEFAULT}",
    ("keras_theano/k1_gru", ".onnx"): f"GRU '/gru/GRU' {NON_DEFAULT}",
    ("keras_theano/k1_lstm", ".onnx"): f"LSTM '/lstm/LSTM' {NON_DEFAULT}",
    ("keras_theano/k2_gru_reset_before", ".onnx"): f"GRU '/gru/GRU' {NON_DEFAULT}",
    ("tf_keras2/gru_reset_before", ".onnx"): f"GRU '/gru_2/GRU' {NON_DEFAULT}",
    ("onnx/gru_reset_before", ".onnx"): f"GRU '/gru_reset_before/GRU' {NON_DEFAULT}",
}


def read_flags(folder: str, name: str) -> list[str]:
    """Keras 1 files record no backend; the fixture's JSON says which one made it."""
    info = fixture_path(folder, f"{name}.json")
    if folder == "keras_theano" and os.path.exists(info):
        with open(info, encoding="utf-8") as handle:
            backend = json.load(handle).get("backend")
        return ["--assume-backend", backend] if backend else []
    return []


def fixtures() -> list[tuple[str, str]]:
    found = []
    for folder, pattern in SOURCE_PATTERNS.items():
        for path in sorted(glob.glob(os.path.join(FIXTURES, folder, "*.input.npy"))):
            name = os.path.basename(path)[: -len(".input.npy")]
            if os.path.exists(fixture_path(folder, pattern.format(name))):
                found.append((folder, name))
    return found


CASES = fixtures()


def source(folder: str, name: str) -> str:
    return fixture_path(folder, SOURCE_PATTERNS[folder].format(name))


def reproduce(model, written: str, suffix: str, x: np.ndarray) -> np.ndarray:
    """Run the written file in its framework on the source's input; output in the source's layout
    (an ONNX LSTM/GRU's (seq, batch, features) input and (seq, directions, batch, hidden) output
    included, through to_canonical_input / from_canonical_output)."""
    from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
    canonical = to_canonical_input(x, model)
    if suffix == ".onnx":
        session = ort.InferenceSession(written, providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]  # token ids (int64) for a model starting with an embedding
        got = session.run(None, {first.name: canonical.astype(np.int64 if "int64" in first.type else np.float32)})[0]
        return from_canonical_output(got, model)
    state = (torch.load(written, weights_only=True) if suffix == ".pt"
             else {k: torch.from_numpy(v) for k, v in load_file(written).items()})
    module = CanonicalModule(model).eval()  # a written state dict torch.nn cannot run should have been refused
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = module(torch.from_numpy(canonical)).numpy()
    return from_canonical_output(got, model)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("folder, name", CASES, ids=[f"{f}/{n}" for f, n in CASES])
def test_written_file_reproduces_source_and_round_trips_bit_identical(run_cli, tmp_path, folder, name, suffix):
    from weightport.api import load
    src = source(folder, name)
    cell = (f"{folder}/{name}", suffix)
    written, back, direct = tmp_path / f"w{suffix}", tmp_path / "back.npz", tmp_path / "direct.npz"
    flags = read_flags(folder, name)
    code, _, err = run_cli("convert", src, "-o", written, "--quiet", *flags)
    if cell in EXPECTED_REFUSALS:
        assert code == 2, f"{cell} is in EXPECTED_REFUSALS but converted (exit {code}): remove its row"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and EXPECTED_REFUSALS[cell] in lines[0], err
        assert not written.exists() and os.listdir(tmp_path) == []
        return
    assert code == 0, f"{cell} refused but not in EXPECTED_REFUSALS: {err.strip()}"
    model = load(src, assume_backend=flags[1] if flags else None)
    assert model.has_architecture, "every matrix fixture carries its architecture"
    x = np.load(fixture_path(folder, f"{name}.input.npy"))
    expected = np.load(fixture_path(folder, f"{name}.output.npy"))
    got = reproduce(model, str(written), suffix, x)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5 * scale)

    assert run_cli("convert", src, "-o", direct, "--quiet", *flags)[0] == 0
    code, _, err = run_cli("convert", written, "-o", back, "--quiet")
    if cell in READ_BACK_REFUSALS:
        assert code == 2, f"{cell} is in READ_BACK_REFUSALS but reads back (exit {code}): remove its row"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and READ_BACK_REFUSALS[cell] in lines[0], err
        return
    assert code == 0, f"{cell}: the written file does not read back and is not in READ_BACK_REFUSALS: {err.strip()}"
    want, returned = dict(np.load(direct)), dict(np.load(back))
    assert sorted(want) == sorted(returned)
    for key, array in want.items():
        assert array.dtype == returned[key].dtype and array.tobytes() == returned[key].tobytes(), key


def test_every_listed_cell_is_a_cell_of_the_matrix():
    """A renamed or removed fixture leaves no stale row behind (a stale row would assert nothing)."""
    matrix = {(f"{folder}/{name}", suffix) for folder, name in CASES for suffix in SUFFIXES}
    assert set(EXPECTED_REFUSALS) <= matrix, sorted(set(EXPECTED_REFUSALS) - matrix)
    assert set(READ_BACK_REFUSALS) <= matrix - set(EXPECTED_REFUSALS), sorted(set(READ_BACK_REFUSALS) - matrix)
