"""The round-trip matrix: every reader fixture x the PyTorch and ONNX writers.

For each fixture (Keras 3, Keras 1/2 on Theano, tf.keras 2, Theano pickles, ONNX) and each writer:

* the written file, loaded by its framework (PyTorch ``load_state_dict(strict=True)`` into the model's
  module, onnxruntime on the written graph), reproduces the output the *source* framework recorded
  (rtol 1e-5);
* A -> B -> A: the written file converted back gives tensors bit-identical to a direct conversion.

A cell a target cannot hold (torch.nn.GRU has no reset_after=False, an ONNX LSTM/GRU graph traced from a
Keras sequence model, ...) must be refused with exit 2 and a one-line reason, leaving no file; the test
checks that too.  The Keras, Theano, npz/scipy and Java columns need a hand-built model per architecture
and live in test_keras_writer, test_onnx_reader, test_theano_target, test_npz_target and test_raw_target.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from tests.conftest import FIXTURES, fixture_path

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from safetensors.numpy import load_file  # noqa: E402

from weightport.core.errors import UnsupportedError  # noqa: E402

SOURCE_PATTERNS = {"keras3": "{}.h5", "keras_theano": "{}.h5", "tf_keras2": "{}.h5", "theano": "{}.shared.p4.pkl",
                   "onnx": "{}.onnx"}


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
    else:
        state = (torch.load(written, weights_only=True) if suffix == ".pt"
                 else {k: torch.from_numpy(v) for k, v in load_file(written).items()})
        try:
            module = CanonicalModule(model).eval()
        except UnsupportedError as error:
            pytest.skip(f"torch.nn cannot run this model ({error.problem}); its port is checked in the source's "
                        "own test module against a hand-built model")
        module.load_state_dict(state, strict=True)
        with torch.no_grad():
            got = module(torch.from_numpy(canonical)).numpy()
    return from_canonical_output(got, model)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".onnx"])
@pytest.mark.parametrize("folder, name", CASES, ids=[f"{f}/{n}" for f, n in CASES])
def test_written_file_reproduces_source_and_round_trips_bit_identical(run_cli, tmp_path, folder, name, suffix):
    from weightport.api import load
    src = source(folder, name)
    written, back, direct = tmp_path / f"w{suffix}", tmp_path / "back.safetensors", tmp_path / "direct.safetensors"
    flags = read_flags(folder, name)
    code, _, err = run_cli("convert", src, "-o", written, "--quiet", *flags)
    if code != 0:  # refused: one clear line, nothing written
        assert code == 2 and len(err.strip().splitlines()) == 1 and not written.exists(), err
        pytest.skip(f"refused by design: {err.strip()}")
    model = load(src, assume_backend=flags[1] if flags else None)
    if not model.has_architecture:
        pytest.skip("no architecture to run")
    x = np.load(fixture_path(folder, f"{name}.input.npy"))
    expected = np.load(fixture_path(folder, f"{name}.output.npy"))
    got = reproduce(model, str(written), suffix, x)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5 * scale)

    assert run_cli("convert", src, "-o", direct, "--quiet", *flags)[0] == 0
    code, _, err = run_cli("convert", written, "-o", back, "--quiet")
    assert code == 0, err
    want, returned = load_file(str(direct)), load_file(str(back))
    assert sorted(want) == sorted(returned)
    for key, array in want.items():
        assert array.dtype == returned[key].dtype and array.tobytes() == returned[key].tobytes(), key
