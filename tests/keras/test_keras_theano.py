"""Keras files saved under the Theano backend by the real Keras 2.3.1 / Theano 1.0.5 stack
(fixtures/keras_theano): per-class semantics rules, Theano's 'same' padding, Flatten orders.
Truth: the outputs Keras/Theano recorded."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
from tests.conftest import fixture_path

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(fixture_path("keras_theano", "k2_*.h5")))
TORCH_NAMES = [n for n in NAMES if n != "k2_gru_reset_before"]


def reproduce(run_cli, tmp_path, name, *extra):
    source = fixture_path("keras_theano", f"{name}.h5")
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", source, "-o", out, *extra)
    assert code == 0, err
    model = load(source)
    module = CanonicalModule(model).eval()
    module.load_state_dict(load_file(str(out)), strict=True)
    x = np.load(fixture_path("keras_theano", f"{name}.input.npy"))
    with torch.no_grad():
        got = module(torch.from_numpy(to_canonical_input(x, model))).numpy()
    return from_canonical_output(got, model), np.load(fixture_path("keras_theano", f"{name}.output.npy"))


def test_fixtures_are_there():
    assert len(NAMES) >= 12


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_theano_backend_file_reproduces_in_torch(run_cli, tmp_path, name):
    got, expected = reproduce(run_cli, tmp_path, name)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", ["k2_conv2d_single", "k2_conv1d_single", "k2_conv3d_single", "k2_transpose_single"])
def test_forcing_correlation_breaks_flipped_classes(run_cli, tmp_path, name):
    """The flip matters: reading these kernels as correlation kernels does not reproduce Theano."""
    got, expected = reproduce(run_cli, tmp_path, name, "--source-semantics", "correlation")
    assert np.abs(got - expected).max() > 1e-2


def test_inspect_names_the_rule_per_class(run_cli):
    code, out, err = run_cli("inspect", fixture_path("keras_theano", "k2_functional_residual.h5"), "--json")
    assert code == 0, err
    rules = {layer["name"]: {t["rule"] for t in layer["tensors"].values() if t["rule"]}
             for layer in json.loads(out)["layers"]}
    assert rules["stem"] == {"keras2-theano-conv-flipped"}
    assert rules["deconv"] == {"keras2-theano-conv-flipped"}
    assert rules["depthwise"] == {"keras2-theano-depthwise-correlation"}
    assert rules["separable"] == {"keras2-theano-depthwise-correlation"}


def test_rules_table_matches_the_recorded_evidence():
    """Every class measured in rules.json is decided the same way by weightport.core.rules."""
    from weightport.core.rules import keras_kernel_semantics
    evidence = json.load(open(fixture_path("keras_theano", "rules.json")))
    for cls, errors in evidence["classes"].items():
        measured = "convolution" if errors["convolution"] < 1e-4 < errors["correlation"] else "correlation"
        semantics, rule = keras_kernel_semantics(evidence["keras"], "theano", cls)
        assert semantics == measured, (cls, rule.id)


def test_validate_passes_and_uses_scipy_for_convolution_kernels(run_cli, tmp_path):
    name = "k2_cnn_channels_last"
    out = tmp_path / "v.safetensors"
    assert run_cli("convert", fixture_path("keras_theano", f"{name}.h5"), "-o", out)[0] == 0
    code, report, err = run_cli("validate", fixture_path("keras_theano", f"{name}.h5"), out,
                                "--input", fixture_path("keras_theano", f"{name}.input.npy"),
                                "--expected", fixture_path("keras_theano", f"{name}.output.npy"), "--json")
    assert code == 0, report + err
    checks = {c["name"]: c for c in json.loads(report)["checks"]}
    assert checks["layer conv_a (Conv2D)"]["status"] == "pass"


def test_reset_before_gru_ports_to_keras3(run_cli, tmp_path):
    import keras
    out = tmp_path / "gru.h5"
    code, _, err = run_cli("convert", fixture_path("keras_theano", "k2_gru_reset_before.h5"), "-o", out, "--to", "keras")
    assert code == 0, err
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, keras.layers.GRU(4, reset_after=False)(inputs))
    model.load_weights(str(out))
    x = np.load(fixture_path("keras_theano", "k2_gru_reset_before.input.npy"))
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.load(fixture_path("keras_theano", "k2_gru_reset_before.output.npy")),
                               rtol=1e-5, atol=1e-6)
