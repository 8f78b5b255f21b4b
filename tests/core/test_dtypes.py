"""Dtypes are preserved by every writer: float16, bfloat16 and float64 come out as they went in, bit for bit.

Sources are made by the real frameworks: the Keras 3 fixture converted once to safetensors, then cast by
torch and saved by the safetensors package.  Each output is read back by the framework it is for (torch.load,
onnx, h5py + Keras 3 load_weights, numpy.load, pickle), never by weightport alone.
"""

from __future__ import annotations

import json
import pickle

import h5py
import keras
import ml_dtypes
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import fixture_path

NAME = "cnn_flatten_dense"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """dtype name -> a safetensors file of the fixture's weights cast by torch (graph metadata kept)."""
    from weightport.cli import main
    folder = tmp_path_factory.mktemp("dtypes")
    base = folder / "base.safetensors"
    assert main(["convert", fixture_path("keras3", f"{NAME}.h5"), "-o", str(base), "--quiet"]) == 0
    with safe_open(str(base), "pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(base))
    out = {}
    for name, dtype in DTYPES.items():
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(cast, str(folder / f"{name}.safetensors"), metadata=metadata)
        out[name] = str(folder / f"{name}.safetensors")
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                                                                if a.dtype.is_floating_point else torch.equal(a, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("middle", [".safetensors", ".pt", ".onnx"])
def test_torch_and_onnx_targets_keep_dtype_and_bits(run_cli, tmp_path, sources, dtype, middle):
    """A -> B -> A: safetensors -> (safetensors | .pt | .onnx) -> safetensors is bit-identical, dtype kept in B."""
    b, back = tmp_path / f"b{middle}", tmp_path / "back.safetensors"
    if middle == ".onnx" and dtype == "bfloat16":  # opset 17 Conv/Gemm take no bfloat16: refused, not cast
        code, _, err = run_cli("convert", sources[dtype], "-o", b, "--quiet")
        assert code == 2 and "bfloat16" in err and not b.exists()
        return
    assert run_cli("convert", sources[dtype], "-o", b, "--quiet")[0] == 0
    if middle == ".pt":
        state = torch.load(str(b), weights_only=True)
        assert {v.dtype for k, v in state.items() if not k.endswith("num_batches_tracked")} == {DTYPES[dtype]}
    if middle == ".onnx":
        model = onnx.load(str(b))
        expected = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(getattr(ml_dtypes, dtype, dtype)))
        assert {i.data_type for i in model.graph.initializer if i.dims} == {expected}
    code, _, err = run_cli("convert", b, "-o", back, "--quiet")
    assert code == 0, err
    original, returned = load_file(sources[dtype]), load_file(str(back))
    for key, tensor in original.items():
        assert same_bits(tensor, returned[key]), key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_keras_targets_keep_dtype_and_load_the_same_values(run_cli, tmp_path, sources, dtype, suffix):
    """The Keras files hold the source dtype (bfloat16 marked as Keras 3 marks it; legacy .h5, which Keras
    reads without bfloat16, gets the exact float32 values); Keras 3 loads them into exactly the values
    Keras gets by casting its own weights to that dtype."""
    out = tmp_path / f"k{suffix}"
    code, _, err = run_cli("convert", sources[dtype], "-o", out, "--to", "keras")
    assert code == 0, err
    widened = dtype == "bfloat16" and suffix == ".h5"  # Keras's legacy HDF5 loader reads no bfloat16
    assert ("no bfloat16" in err) == widened
    with h5py.File(out) as f:
        datasets = []
        f.visititems(lambda key, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
        for item in datasets:
            if widened:
                assert item.dtype == np.float32, item.name
            elif dtype == "bfloat16":
                assert item.dtype.itemsize == 2 and item.attrs["dtype"] == "bfloat16", item.name
            else:
                assert item.dtype == np.dtype(dtype), item.name
    loaded = keras.models.load_model(fixture_path("keras3", f"{NAME}.keras"))
    reference = keras.models.load_model(fixture_path("keras3", f"{NAME}.keras"))
    for variable in loaded.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    for variable in reference.weights:  # Keras's own weights, cast to the dtype and back
        variable.assign(np.asarray(variable.numpy()).astype(getattr(ml_dtypes, dtype, dtype)).astype(np.float32))
    loaded.load_weights(str(out))
    for a, b in zip(loaded.weights, reference.weights):
        assert np.array_equal(np.asarray(a.numpy()), np.asarray(b.numpy())), a.path
    x = np.load(fixture_path("keras3", f"{NAME}.input.npy"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_npz_keeps_dtype_and_bits(run_cli, tmp_path, sources, dtype):
    out = tmp_path / "w.npz"
    assert run_cli("convert", sources[dtype], "-o", out, "--quiet")[0] == 0
    sidecar = json.loads((tmp_path / "w.npz.json").read_text())
    original = load_file(sources[dtype])
    with np.load(out, allow_pickle=False) as arrays:
        bias = arrays["conv_a.bias"]
        if dtype == "bfloat16":  # NumPy has no bfloat16: the 2-byte words, named bfloat16 in the sidecar
            bias = bias.view(ml_dtypes.bfloat16)
        assert bias.dtype == np.dtype(getattr(ml_dtypes, dtype, dtype))
    assert {e["dtype"] for key, e in sidecar["arrays"].items() if not key.endswith("num_batches_tracked")} == {dtype}
    assert same_bits(torch.from_numpy(bias.view(np.int16 if dtype == "bfloat16" else bias.dtype)),
                     original["conv_a.bias"].view(torch.int16) if dtype == "bfloat16" else original["conv_a.bias"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_theano_keeps_dtype_or_widens_bfloat16_exactly(run_cli, tmp_path, sources, dtype):
    """Theano has float16 and float64 but no bfloat16: bfloat16 becomes float32 (exact), with a warning."""
    out = tmp_path / "w.pkl"
    code, _, err = run_cli("convert", sources[dtype], "-o", out, "--to", "theano")
    assert code == 0, err
    with open(out, "rb") as handle:
        arrays = pickle.load(handle)
    want = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
    assert {a.dtype for a in arrays} == {np.dtype(want)}
    assert ("no bfloat16" in err) == (dtype == "bfloat16")
    bias = load_file(sources[dtype])["conv_a.bias"].to(torch.float32 if dtype == "bfloat16" else DTYPES[dtype])
    assert any(a.shape == tuple(bias.shape) and np.array_equal(a, bias.numpy()) for a in arrays)


def test_keras3_bfloat16_weights_read_bit_for_bit(run_cli, tmp_path):
    """A Keras 3 model computing in bfloat16 saves bfloat16 variables; they reach torch as bfloat16, same bits."""
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="bfloat16", name="head")(inputs))
    rng = np.random.RandomState(7)
    model.get_layer("head").set_weights([rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (3,))])
    model.save_weights(str(tmp_path / "m.weights.h5"))
    kernel, bias = (np.asarray(v.numpy()) for v in model.get_layer("head").weights)
    assert kernel.dtype == np.dtype(ml_dtypes.bfloat16)
    code, _, err = run_cli("convert", tmp_path / "m.weights.h5", "-o", tmp_path / "m.pt", "--quiet")
    assert code == 0, err
    state = torch.load(str(tmp_path / "m.pt"), weights_only=True)
    assert state["head.weight"].dtype == torch.bfloat16 and state["head.bias"].dtype == torch.bfloat16
    assert np.array_equal(state["head.weight"].view(torch.int16).numpy(), kernel.T.view(np.int16))  # Dense (in, out)
    assert np.array_equal(state["head.bias"].view(torch.int16).numpy(), bias.view(np.int16))
