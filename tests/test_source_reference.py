"""A reference without recorded outputs (issue 19): ``validate SRC DST`` with no ``--input``/``--expected``
runs the whole model against the source file run by its own framework (Keras 3 for TensorFlow-backend
Keras files, onnxruntime for ONNX) on seeded random input; Theano-era sources keep needing recorded
outputs (a skip with that reason, never a pass).

Truth: the runners reproduce the outputs the real frameworks recorded for each fixture, on the recorded
input (so the reference is the framework's, not ours); a correct port passes, a tampered one fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import fixture_path, require

pytestmark = pytest.mark.requires("torch")

KERAS_RUNNABLE = ["keras3/cnn_flatten_dense.h5", "keras3/functional_residual.keras", "keras3/channels_first_cnn.h5",
                  "keras3/conv1d_rnn.keras", "tf_keras2/cnn_sequential.h5", "tf_keras2/rnn_stack.h5",
                  "tf_keras2/embedding_conv1d.h5", "theano_target/bn_cnn.h5"]
ONNX_RUNNABLE = ["onnx/torch_cnn.onnx", "onnx/torch_cnn_external.onnx", "onnx/lstm_bidirectional.onnx",
                 "onnx/helper_autopad_gemm.onnx"]
THEANO_ERA = ["keras_theano/k2_cnn_channels_last.h5", "theano/theano_cnn.py2.pkl", "theano_target/bn_cnn.pkl"]


def recorded(source: str) -> tuple[np.ndarray, np.ndarray]:
    stem = fixture_path(source).rsplit(".", 1)[0]
    return np.load(stem + ".input.npy"), np.load(stem + ".output.npy")


def whole_model(report: dict) -> dict:
    (check,) = [c for c in report["checks"] if c["check"] == "whole-model"]
    return check


def convert(run_cli, tmp_path, source: str) -> str:
    out = tmp_path / (os.path.basename(source).replace(".", "_") + ".safetensors")
    code, _, err = run_cli("convert", fixture_path(source), "-o", out, "--quiet")
    assert code == 0, err
    return str(out)


@pytest.mark.parametrize("source", KERAS_RUNNABLE)
def test_keras_runner_reproduces_what_keras_recorded(source):
    require("tensorflow")
    from weightport.formats.keras.runner import run_keras_file
    x, y = recorded(source)
    got = run_keras_file(fixture_path(source), x)
    np.testing.assert_allclose(got, y, rtol=0, atol=1e-5 * max(1.0, float(np.abs(y).max())))


@pytest.mark.parametrize("source", ONNX_RUNNABLE)
def test_onnx_runner_reproduces_what_onnxruntime_recorded(source):
    require("onnxruntime")
    from weightport.formats.onnx.runner import run_onnx_file
    x, y = recorded(source)
    np.testing.assert_allclose(run_onnx_file(fixture_path(source), x), y, rtol=0,
                               atol=1e-5 * max(1.0, float(np.abs(y).max())))


@pytest.mark.parametrize("source", KERAS_RUNNABLE + ONNX_RUNNABLE)
def test_correct_port_passes_against_the_source_framework(run_cli, tmp_path, source):
    require("onnxruntime" if source.endswith(".onnx") else "tensorflow")
    converted = convert(run_cli, tmp_path, source)
    samples = "2" if source.endswith(".onnx") else "3"  # the ONNX fixtures were exported with a fixed batch of 2
    code, out, err = run_cli("validate", fixture_path(source), converted, "--json", "--seed", "7", "--samples", samples)
    report = json.loads(out)
    check = whole_model(report)
    runner = "onnxruntime" if source.endswith(".onnx") else "Keras 3"
    assert check["status"] == "pass" and check["name"].startswith(f"whole model vs {runner} running the source"), check
    assert f"seed 7, {samples} samples" in check["name"]
    assert report["reference"]["seed"] == 7 and report["reference"]["samples"] == int(samples)
    x, _ = recorded(source)
    batch_axis = 1 if "lstm" in source else 0  # an ONNX LSTM input is (seq, batch, features)
    expected_shape = list(x.shape)
    expected_shape[batch_axis] = int(samples)
    assert report["reference"]["input_shape"] == expected_shape
    assert code == 0 and report["status"] == "pass"


def test_seed_and_samples_are_shown_and_change_the_input(run_cli, tmp_path):
    require("tensorflow")
    source = "keras3/cnn_flatten_dense.h5"
    converted = convert(run_cli, tmp_path, source)
    code, text, _ = run_cli("validate", fixture_path(source), converted)
    assert code == 0
    assert "PASS whole model vs Keras 3 running the source (seed 0, 2 samples)" in text
    assert "reference: Keras 3 ran the source on seeded random input (seed 0, 2 samples, shape (2, 9, 11, 3))" in text
    errors = set()
    for seed in ("0", "1"):
        _, out, _ = run_cli("validate", fixture_path(source), converted, "--json", "--seed", seed)
        errors.add(whole_model(json.loads(out))["max_abs_error"])
    assert len(errors) == 2  # another seed is another input
    code, _, err = run_cli("validate", fixture_path(source), converted, "--samples", "0")
    assert code == 2 and "--samples" in err


def test_a_fixed_batch_onnx_graph_is_run_on_the_batch_it_was_exported_with(run_cli, tmp_path):
    """torch_cnn.onnx fixes its batch at 2: the reference takes 2 samples whatever --samples asks (3 here,
    which onnxruntime would refuse), and the check and its reference say so."""
    require("onnxruntime")
    source = "onnx/torch_cnn.onnx"
    converted = convert(run_cli, tmp_path, source)
    code, out, _ = run_cli("validate", fixture_path(source), converted, "--json", "--samples", "3")
    report = json.loads(out)
    check = whole_model(report)
    assert code == 0 and check["status"] == "pass" and "2 samples" in check["name"], report
    assert report["reference"]["samples"] == 2 and report["reference"]["input_shape"][0] == 2, report


@pytest.mark.parametrize("source", ["keras3/functional_residual.h5", "onnx/torch_cnn.onnx"])
def test_a_tampered_port_fails_against_the_source_framework(run_cli, tmp_path, source):
    require("onnxruntime" if source.endswith(".onnx") else "tensorflow")
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open
    converted = convert(run_cli, tmp_path, source)
    with safe_open(converted, "np") as handle:
        metadata = handle.metadata()
    tensors = load_file(converted)
    key = next(k for k, v in tensors.items() if k.endswith("bias") and np.abs(v).max() > 0)
    tensors[key] = np.zeros_like(tensors[key])
    bad = str(tmp_path / "bad.safetensors")
    save_file(tensors, bad, metadata=metadata)
    code, out, _ = run_cli("validate", fixture_path(source), bad, "--json")
    report = json.loads(out)
    assert code == 1 and whole_model(report)["status"] == "fail", report
    assert key.rsplit(".", 1)[0] in (whole_model(report)["likely_cause"] or "")


@pytest.mark.parametrize("source", THEANO_ERA)
def test_theano_era_sources_still_need_recorded_outputs(run_cli, tmp_path, source):
    require("tensorflow")
    converted = convert(run_cli, tmp_path, source)
    _, out, _ = run_cli("validate", fixture_path(source), converted, "--json")
    check = whole_model(json.loads(out))
    assert check["status"] == "skip" and "Theano-era source" in check["reason"] and "--input" in check["reason"]
    assert json.loads(out)["reference"]["runner"] == "recorded"


def test_a_weights_only_file_says_it_has_no_architecture(run_cli, tmp_path):
    require("tensorflow")
    source = "keras3/cnn_flatten_dense.weights.h5"
    converted = convert(run_cli, tmp_path, source)
    _, out, _ = run_cli("validate", fixture_path(source), converted, "--json")
    check = whole_model(json.loads(out))
    assert check["status"] == "skip" and "weights only" in check["reason"]


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_lambda_layer_is_never_run_by_the_reference(run_cli, tmp_path, suffix):
    """A real Keras 3 model whose Lambda would create a canary: validating it runs no code from the file."""
    require("tensorflow")
    canary = tmp_path / "CANARY"
    model = tmp_path / f"lambda{suffix}"
    script = (
        "import keras\n"
        "inputs = keras.Input((4,))\n"
        f"x = keras.layers.Lambda(lambda t: (open({str(canary)!r}, 'w'), t)[1] * 2)(inputs)\n"
        "x = keras.layers.Dense(3)(x)\n"
        f"keras.Model(inputs, x).save({str(model)!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    if canary.exists():
        canary.unlink()  # building the model traced the lambda once; validating must not
    out_file = tmp_path / "lambda.safetensors"
    code, _, err = run_cli("convert", model, "-o", out_file, "--quiet")
    assert code == 0, err
    _, out, _ = run_cli("validate", model, out_file, "--json")
    check = whole_model(json.loads(out))
    assert check["status"] == "skip" and "Lambda" in check["reason"] and "never runs code" in check["reason"]
    assert not canary.exists()


def test_convert_validate_and_the_api_use_the_source_framework_too(run_cli, tmp_path, capsys):
    require("onnxruntime")
    from weightport import validate
    source = "onnx/torch_conv1d.onnx"
    out = tmp_path / "gated.safetensors"
    code, text, err = run_cli("convert", fixture_path(source), "-o", out, "--validate", "--seed", "5")
    assert code == 0 and out.exists(), err
    report = validate(fixture_path(source), str(out), seed=5, samples=2)
    check = whole_model(report.to_dict())
    assert check["status"] == "pass" and check["name"] == "whole model vs onnxruntime running the source (seed 5, 2 samples)"
    assert report.to_dict()["reference"]["seed"] == 5
