"""Theano/Lasagne weights made by real Theano 1.0.5 (fixtures/theano), in every saving style, read by
the allowlist unpickler and checked against the outputs Theano computed, in PyTorch and in Keras 3."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
from tests.conftest import fixture_path

STYLES = ["shared.p2.pkl", "shared.p4.pkl", "values.p2.pkl", "values.p5.pkl", "recipe.pkl", "py2.pkl",
          "savez.npz", "pkl_utils.zip"]
NETS = ["theano_cnn", "theano_cnn_noflip", "theano_grouped", "theano_lstm"]


def run_torch(source, state, net):
    model = load(source)
    module = CanonicalModule(model).eval()
    module.load_state_dict(state, strict=True)
    x = np.load(fixture_path("theano", f"{net}.input.npy"))
    with torch.no_grad():
        return from_canonical_output(module(torch.from_numpy(to_canonical_input(x, model))).numpy(), model)


def test_every_style_is_there():
    for net in NETS:
        for style in STYLES:
            assert os.path.exists(fixture_path("theano", f"{net}.{style}")), (net, style)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("net", NETS)
def test_pickle_reproduces_theano_in_torch(run_cli, tmp_path, net, style):
    source = fixture_path("theano", f"{net}.{style}")
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", source, "-o", out)
    assert code == 0, err
    got = run_torch(source, load_file(str(out)), net)
    expected = np.load(fixture_path("theano", f"{net}.output.npy"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("net,wrong", [("theano_cnn", "correlation"), ("theano_grouped", "correlation"),
                                       ("theano_cnn_noflip", "convolution")])
def test_wrong_semantics_does_not_reproduce(run_cli, tmp_path, net, wrong):
    source = fixture_path("theano", f"{net}.values.p2.pkl")
    out = tmp_path / "out.safetensors"
    assert run_cli("convert", source, "-o", out, "--source-semantics", wrong)[0] == 0
    got = run_torch(source, load_file(str(out)), net)
    assert np.abs(got - np.load(fixture_path("theano", f"{net}.output.npy"))).max() > 1e-2


def test_without_spec_conv_kernels_need_a_semantics_choice(run_cli, tmp_path):
    lonely = tmp_path / "weights.pkl"
    shutil.copy(fixture_path("theano", "theano_cnn.values.p2.pkl"), lonely)
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli("convert", lonely, "-o", out)
    assert code == 2 and "--source-semantics" in err and "Conv2DDNNLayer" in err and "Traceback" not in err
    assert not out.exists()
    code, _, err = run_cli("convert", lonely, "-o", out, "--source-semantics", "convolution")
    assert code == 0, err
    stored = np.load(fixture_path("theano", "theano_cnn.savez.npz"))["arr_0"]  # conv1.W as Theano keeps it
    np.testing.assert_array_equal(load_file(str(out))["layer0.weight"].numpy(), stored[:, :, ::-1, ::-1])


def test_shared_variable_names_are_kept(run_cli):
    code, out, err = run_cli("inspect", fixture_path("theano", "theano_cnn.shared.p4.pkl"), "--json")
    assert code == 0, err
    assert '"source_key": "conv1.W"' in out


def test_theano_cnn_ports_to_keras3(run_cli, tmp_path):
    """Theano NCHW convolution kernels -> Keras HWIO correlation kernels, Dense rows permuted for Keras's
    channels-last Flatten, Lasagne inv_std -> variance: an equivalent Keras 3 model reproduces Theano."""
    import keras
    out = tmp_path / "theano.h5"
    code, _, err = run_cli("convert", fixture_path("theano", "theano_cnn.shared.p2.pkl"), "-o", out, "--to", "keras")
    assert code == 0, err
    L = keras.layers
    inputs = keras.Input((9, 8, 3))
    x = L.Conv2D(4, (3, 2), activation="relu")(inputs)
    x = L.BatchNormalization(epsilon=1e-4)(x)
    x = L.ZeroPadding2D(1)(x)
    x = L.Conv2D(5, (2, 3), strides=2)(x)
    x = L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(6, activation="tanh")(x))
    model.load_weights(str(out))
    x = np.load(fixture_path("theano", "theano_cnn.input.npy")).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(fixture_path("theano", "theano_cnn.output.npy")),
                               rtol=1e-5, atol=1e-5)


def test_detect_finds_theano_semantics_from_one_pair(run_cli, tmp_path):
    import json
    for net, semantics in (("theano_grouped", "convolution"),):
        lonely_dir = tmp_path / net
        lonely_dir.mkdir()
        source = fixture_path("theano", f"{net}.values.p5.pkl")
        spec = json.load(open(fixture_path("theano", f"{net}.spec.json")))
        for layer in spec["layers"]:
            layer.pop("semantics", None)  # the spec names the layers but not the semantics
        (lonely_dir / "spec.json").write_text(json.dumps(spec))
        shutil.copy(source, lonely_dir / "w.pkl")
        code, out, err = run_cli("detect", lonely_dir / "w.pkl", "--spec", lonely_dir / "spec.json",
                                 "--input", fixture_path("theano", f"{net}.input.npy"),
                                 "--expected", fixture_path("theano", f"{net}.output.npy"), "--json")
        assert code == 0, out + err
        assert json.loads(out)["source_semantics"] == semantics
