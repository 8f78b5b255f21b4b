"""Keras 3 (TensorFlow backend) .h5 -> PyTorch: the foundation's end-to-end proof.

Truth: the outputs Keras itself recorded (fixtures/keras3, made by
make_keras3_fixtures.py) and a hand-written torch module; the expected tensor
layouts are computed here with plain np.transpose from the h5 datasets.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
from tests.conftest import fixture_path, require

FIXTURES = ["cnn_flatten_dense", "functional_residual", "conv1d_rnn", "channels_first_cnn", "conv3d_grouped",
            "functional_residual_flatten", "conv2d_transpose_single"]


class HandWritten(torch.nn.Module):
    """The torch twin of fixtures/keras3 cnn_flatten_dense, written by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = torch.nn.Conv2d(3, 4, (3, 2))
        self.bn = torch.nn.BatchNorm2d(4, eps=1e-3)
        self.conv_same_s2 = torch.nn.Conv2d(4, 5, (2, 3), stride=2)
        self.dense = torch.nn.Linear(5 * 2 * 2, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv_a(x)))          # (N, 4, 7, 10)
        x = F.pad(x, (0, 1, 0, 1))                        # TF 'same', stride 2: H and W each pad 1, at the end
        x = self.conv_same_s2(x)                          # (N, 5, 4, 5)
        x = F.max_pool2d(x, 2)                            # (N, 5, 2, 2)
        return torch.tanh(self.dense(torch.flatten(x, 1)))


def convert_to_safetensors(run_cli, name: str, tmp_path) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{name}.safetensors"
    code, stdout, stderr = run_cli("convert", fixture_path("keras3", f"{name}.h5"), "-o", out, "--to", "torch")
    assert code == 0, stderr
    return load_file(str(out))


def test_conv_kernel_is_hwio_to_oihw_and_dense_rows_are_chw(run_cli, tmp_path):
    state = convert_to_safetensors(run_cli, "cnn_flatten_dense", tmp_path)
    with h5py.File(fixture_path("keras3", "cnn_flatten_dense.h5")) as f:
        kernel = f["model_weights/conv_a/conv_a/kernel"][()]
        dense = f["model_weights/dense/dense/kernel"][()]
    assert kernel.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(state["conv_a.weight"].numpy(), np.transpose(kernel, (3, 2, 0, 1)))
    # Keras flattens (h=2, w=2, c=5) channels-last; torch flattens (c, h, w).
    expected = dense.reshape(2, 2, 5, 6).transpose(3, 2, 0, 1).reshape(6, 20)
    np.testing.assert_array_equal(state["dense.weight"].numpy(), expected)
    assert not np.array_equal(expected, dense.T)  # the permutation matters for this fixture


def test_hand_written_torch_module_reproduces_keras(run_cli, tmp_path):
    state = convert_to_safetensors(run_cli, "cnn_flatten_dense", tmp_path)
    module = HandWritten().eval()
    module.load_state_dict(state, strict=True)
    x = np.load(fixture_path("keras3", "cnn_flatten_dense.input.npy"))
    expected = np.load(fixture_path("keras3", "cnn_flatten_dense.output.npy"))
    with torch.no_grad():
        got = module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unpermuted_dense_rows_would_fail(run_cli, tmp_path):
    state = convert_to_safetensors(run_cli, "cnn_flatten_dense", tmp_path)
    with h5py.File(fixture_path("keras3", "cnn_flatten_dense.h5")) as f:
        state["dense.weight"] = torch.from_numpy(f["model_weights/dense/dense/kernel"][()].T.copy())
    module = HandWritten().eval()
    module.load_state_dict(state, strict=True)
    x = np.load(fixture_path("keras3", "cnn_flatten_dense.input.npy"))
    expected = np.load(fixture_path("keras3", "cnn_flatten_dense.output.npy"))
    with torch.no_grad():
        got = module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(got - expected).max() > 1e-2


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
@pytest.mark.parametrize("name", FIXTURES)
def test_every_keras3_fixture_reproduces_keras_in_torch(run_cli, tmp_path, name, suffix):
    source = fixture_path("keras3", f"{name}{suffix}")
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "torch")
    assert code == 0, err
    state = load_file(str(out))
    model = load(source)
    module = CanonicalModule(model).eval()
    module.load_state_dict(state, strict=True)
    x = np.load(fixture_path("keras3", f"{name}.input.npy"))
    expected = np.load(fixture_path("keras3", f"{name}.output.npy"))
    with torch.no_grad():
        got = module(torch.from_numpy(to_canonical_input(x, model))).numpy()
    np.testing.assert_allclose(from_canonical_output(got, model), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_pt_output_loads_with_weights_only(run_cli, tmp_path):
    out = tmp_path / "model.pt"
    code, _, stderr = run_cli("convert", fixture_path("keras3", "cnn_flatten_dense.h5"), "-o", out)
    assert code == 0, stderr
    state = torch.load(out, weights_only=True)
    assert state["bn.num_batches_tracked"].dtype == torch.int64
    module = HandWritten().eval()
    module.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_weights_only_file_gives_the_same_tensors_and_warns(run_cli, tmp_path, name):
    full = convert_to_safetensors(run_cli, name, tmp_path)
    out = tmp_path / "weights_only.safetensors"
    code, _, err = run_cli("convert", fixture_path("keras3", f"{name}.weights.h5"), "-o", out)
    assert code == 0, err
    assert "no model config" in err
    weights_only = load_file(str(out))
    assert set(weights_only) == set(full)
    kinds = {key: layer.kind for key, layer, _ in load(fixture_path("keras3", f"{name}.h5")).state_keys()}
    for key, value in full.items():
        if kinds.get(key) == "dense" and key.endswith(".weight"):
            continue  # rows after a Flatten need the architecture
        assert torch.equal(weights_only[key], value), key


def test_hard_sigmoid_is_keras3s_own(run_cli, tmp_path):
    """Keras 3 defines hard_sigmoid as relu6(x + 3) / 6 (Keras 1/2: clip(0.2 x + 0.5, 0, 1)); inputs spread
    over [-4, 4] tell the two apart.  Truth: the model's own predict()."""
    keras = require("keras")
    rng = np.random.RandomState(11)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="hard_sigmoid", name="dense")(inputs)
    outputs = keras.layers.Activation("hard_sigmoid", name="act")(keras.layers.Dense(4, name="proj")(hidden))
    model = keras.Model(inputs, outputs)
    model.set_weights([rng.uniform(-2, 2, w.shape).astype(np.float32) for w in model.get_weights()])
    source = tmp_path / "hs.h5"
    model.save(source)
    x = rng.uniform(-2, 2, (8, 6)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    out = tmp_path / "hs.safetensors"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "torch")
    assert code == 0, err
    module = CanonicalModule(load(str(source)))
    module.load_state_dict(load_file(str(out)), strict=True)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    keras2 = np.clip(0.2 * (x @ model.get_weights()[0] + model.get_weights()[1]) + 0.5, 0, 1)
    assert np.abs(keras2 - np.clip((x @ model.get_weights()[0] + model.get_weights()[1]) / 6 + 0.5, 0, 1)).max() > 0.05
