"""The validation gate must catch each mistake this tool exists to prevent, and name it.

Each test converts a real fixture correctly (the gate passes), then injects one mistake into the
converted file with plain numpy and checks the gate fails with exit 1, naming the layer and cause.
Source side: TensorFlow/Keras running the stored arrays; target side: PyTorch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tests.conftest import fixture_path


def converted(run_cli, tmp_path, folder, name):
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", fixture_path(folder, f"{name}.h5"), "-o", out)
    assert code == 0, err
    return out


def validate(run_cli, folder, name, dst):
    return run_cli("validate", fixture_path(folder, f"{name}.h5"), dst,
                   "--input", fixture_path(folder, f"{name}.input.npy"),
                   "--expected", fixture_path(folder, f"{name}.output.npy"), "--json")


def tamper(path, out, change, metadata_change=None):
    tensors = load_file(str(path))
    with safe_open(str(path), "np") as handle:
        metadata = dict(handle.metadata())
    change(tensors)
    if metadata_change:
        metadata_change(metadata)
    save_file(tensors, str(out), metadata=metadata)
    return out


@pytest.mark.parametrize("folder,name", [("keras3", "cnn_flatten_dense"), ("keras3", "functional_residual_flatten"),
                                         ("keras3", "conv1d_rnn"), ("tf_keras2", "rnn_stack"),
                                         ("tf_keras2", "cnn_sequential")])
def test_correct_conversions_pass(run_cli, tmp_path, folder, name):
    code, out, err = validate(run_cli, folder, name, converted(run_cli, tmp_path, folder, name))
    report = json.loads(out)
    assert code == 0 and report["status"] == "pass" and report["exit_code"] == 0, out
    assert any(c["check"] == "layer" and c["status"] == "pass" for c in report["checks"])


def failing(report):
    return {c["name"]: c for c in report["checks"] if c["status"] == "fail"}


def test_missing_flip_is_caught_and_named(run_cli, tmp_path):
    good = converted(run_cli, tmp_path, "keras3", "cnn_flatten_dense")
    bad = tamper(good, tmp_path / "bad.safetensors",
                 lambda t: t.update({"conv_a.weight": np.ascontiguousarray(t["conv_a.weight"][:, :, ::-1, ::-1])}))
    code, out, _ = validate(run_cli, "keras3", "cnn_flatten_dense", bad)
    failed = failing(json.loads(out))
    assert code == 1
    assert "180-degree flip" in failed["layer conv_a (Conv2D)"]["likely_cause"]
    assert failed["whole model vs recorded output"]["likely_cause"].startswith("first diverging layer conv_a (conv)")


def test_swapped_kernel_axes_are_caught(run_cli, tmp_path):
    good = converted(run_cli, tmp_path, "keras3", "functional_residual")
    bad = tamper(good, tmp_path / "bad.safetensors",
                 lambda t: t.update({"stem.weight": np.ascontiguousarray(t["stem.weight"].swapaxes(2, 3))}))
    code, out, _ = validate(run_cli, "keras3", "functional_residual", bad)
    failed = failing(json.loads(out))
    assert code == 1
    assert "H/W transposed" in failed["layer stem (Conv2D)"]["likely_cause"]


def test_unpermuted_dense_rows_are_caught_and_named(run_cli, tmp_path):
    good = converted(run_cli, tmp_path, "keras3", "cnn_flatten_dense")
    def unpermute(t):
        w = t["dense.weight"]  # (6, 20) rows in C,H,W = (5, 2, 2); a naive port keeps H,W,C
        t["dense.weight"] = np.ascontiguousarray(w.reshape(6, 5, 2, 2).transpose(0, 2, 3, 1).reshape(6, 20))
    code, out, _ = validate(run_cli, "keras3", "cnn_flatten_dense", tamper(good, tmp_path / "bad.safetensors", unpermute))
    failed = failing(json.loads(out))
    assert code == 1
    assert "Dense rows not permuted" in failed["layer dense (Dense)"]["likely_cause"]


def test_swapped_gru_gates_are_caught_and_named(run_cli, tmp_path):
    good = converted(run_cli, tmp_path, "tf_keras2", "rnn_stack")
    def swap(t):
        for key in ("gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0"):
            r, z, n = np.split(t[key], 3, axis=0)
            t[key] = np.ascontiguousarray(np.concatenate([z, r, n], axis=0))  # Keras order kept: z, r, h
    code, out, _ = validate(run_cli, "tf_keras2", "rnn_stack", tamper(good, tmp_path / "bad.safetensors", swap))
    failed = failing(json.loads(out))
    assert code == 1
    assert "gates in the wrong order" in failed["layer gru (GRU)"]["likely_cause"]


def test_wrong_epsilon_is_caught(run_cli, tmp_path):
    good = converted(run_cli, tmp_path, "keras3", "cnn_flatten_dense")
    def epsilon(metadata):
        graph = json.loads(metadata["weightport.graph"])
        for layer in graph["layers"]:
            if layer["kind"] == "batchnorm":
                layer["attrs"]["epsilon"] = 1e-5  # PyTorch's default instead of Keras's 1e-3
        metadata["weightport.graph"] = json.dumps(graph)
    bad = tamper(good, tmp_path / "bad.safetensors", lambda t: None, epsilon)
    code, out, _ = validate(run_cli, "keras3", "cnn_flatten_dense", bad)
    whole = failing(json.loads(out))["whole model vs recorded output"]
    assert code == 1 and "first diverging layer bn (batchnorm)" in whole["likely_cause"], whole


def test_symmetric_padding_instead_of_tf_same_is_caught(run_cli, tmp_path):
    good = converted(run_cli, tmp_path, "keras3", "cnn_flatten_dense")
    def pads(metadata):
        graph = json.loads(metadata["weightport.graph"])
        for layer in graph["layers"]:
            if layer["name"] == "conv_same_s2":
                layer["attrs"]["pads"] = [[1, 0], [1, 0]]  # the odd pad at the start, as a naive port does
        metadata["weightport.graph"] = json.dumps(graph)
    bad = tamper(good, tmp_path / "bad.safetensors", lambda t: None, pads)
    code, out, _ = validate(run_cli, "keras3", "cnn_flatten_dense", bad)
    whole = failing(json.loads(out))["whole model vs recorded output"]
    assert code == 1 and "first diverging layer conv_same_s2 (conv)" in whole["likely_cause"], whole


def test_flip_symmetric_kernel_is_reported_as_ambiguous():
    from weightport.checks.layer_check import ambiguity
    from weightport.core.model import Layer
    kernel = np.random.default_rng(0).uniform(size=(2, 3, 3, 3)).astype(np.float32)
    symmetric = (kernel + kernel[:, :, ::-1, ::-1]) / 2
    layer = Layer("c", "conv")
    assert "180-degree rotation" in ambiguity(layer, {"weight": symmetric})
    assert ambiguity(layer, {"weight": kernel}) is None


def test_mismatched_keys_fail_with_exit_1(run_cli, tmp_path):
    other = converted(run_cli, tmp_path, "keras3", "functional_residual")
    code, out, _ = validate(run_cli, "keras3", "cnn_flatten_dense", other)
    assert code == 1 and "missing conv_a.weight" in out


def test_convert_validate_writes_only_what_passes(run_cli, tmp_path):
    src = fixture_path("keras3", "cnn_flatten_dense.h5")
    x = fixture_path("keras3", "cnn_flatten_dense.input.npy")
    good_y = fixture_path("keras3", "cnn_flatten_dense.output.npy")
    wrong_y = tmp_path / "wrong.npy"
    np.save(wrong_y, np.load(good_y) + 0.5)
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli("convert", src, "-o", out, "--validate", "--input", x, "--expected", wrong_y)
    assert code == 1 and "FAIL whole model" in stdout and "not written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.npy"]
    code, stdout, err = run_cli("convert", src, "-o", out, "--validate", "--input", x, "--expected", good_y)
    assert code == 0 and "result: PASS" in stdout and out.exists()


def plain_safetensors(tmp_path):
    """A state_dict saved by the safetensors package itself: tensors with no architecture, no layer kinds."""
    rng = np.random.default_rng(3)
    source = tmp_path / "plain.safetensors"
    save_file({"block.weight": rng.standard_normal((4, 3)).astype(np.float32),
               "block.bias": rng.standard_normal(4).astype(np.float32)}, str(source))
    return source


def test_an_unchecked_layer_makes_the_result_incomplete_not_a_pass(run_cli, tmp_path):
    source = plain_safetensors(tmp_path)
    copy = tmp_path / "copy.safetensors"
    assert run_cli("convert", source, "-o", copy)[0] == 0
    code, out, _ = run_cli("validate", source, copy, "--json")
    report = json.loads(out)
    assert code == 3 and report["status"] == "incomplete" and report["exit_code"] == 3
    assert [gap["layer"] for gap in report["unchecked_layers"]] == ["block"]
    assert "no layer-level oracle" in report["unchecked_layers"][0]["reason"]
    assert any(c["check"] == "names" and c["status"] == "pass" for c in report["checks"])
    code, out, _ = run_cli("validate", source, copy, "--allow-incomplete")
    assert code == 0 and "UNCHECKED layer block" in out and "result: INCOMPLETE (allowed" in out


def test_convert_validate_writes_an_incomplete_port_only_when_allowed(run_cli, tmp_path):
    source = plain_safetensors(tmp_path)
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli("convert", source, "-o", out, "--validate")
    assert code == 3 and "result: INCOMPLETE" in stdout and "not written" in err and not out.exists()
    code, stdout, _ = run_cli("convert", source, "-o", out, "--validate", "--allow-incomplete")
    assert code == 0 and out.exists() and f"-> {out} " in stdout  # the report names the final output


def test_a_skipped_layer_check_is_never_a_pass():
    from weightport.checks.report import Check, Report
    report = Report("s", "d", weighted_layers=[("conv_b", "conv")])
    report.add(Check("layer conv_b (Conv2D)", "skip", "layer", "conv_b", "conv", reason="no oracle"))
    assert report.status == "incomplete" and report.exit_code == 3 and not report.passed
    report.add(Check("whole model", "pass", "whole-model"))
    assert report.status == "pass"
    report.add(Check("layer conv_b (Conv2D)", "fail", "layer", "conv_b", "conv"))
    assert report.status == "fail" and report.exit_code == 1


def test_an_input_in_the_wrong_layout_is_refused_before_anything_runs(run_cli, tmp_path):
    name = "cnn_flatten_dense"
    good = converted(run_cli, tmp_path, "keras3", name)
    channels_first = tmp_path / "x.npy"
    np.save(channels_first, np.ascontiguousarray(np.moveaxis(np.load(fixture_path("keras3", f"{name}.input.npy")), -1, 1)))
    code, out, err = run_cli("validate", fixture_path("keras3", f"{name}.h5"), good, "--input", channels_first,
                             "--expected", fixture_path("keras3", f"{name}.output.npy"))
    assert code == 2 and "internal error" not in err and "(N, 9, 11, 3)" in err and "channels-last" in err, err


def test_near_zero_outputs_are_judged_against_the_reference_scale():
    from weightport.checks.report import compare
    reference = np.array([1.0, 1e-9, -2.0], np.float32)
    close = reference + np.array([1e-7, 1e-7, -1e-7], np.float32)  # float32 noise on values of scale 2
    assert compare("x", close, reference, 1e-5, 1e-4).status == "pass"
    wrong = reference + np.array([0.0, 0.0, 0.01], np.float32)
    check = compare("x", wrong, reference, 1e-5, 1e-4)
    assert check.status == "fail" and abs(check.max_rel_error - 0.005) < 1e-6 and check.cosine < 1


def test_detect_finds_correlation_for_a_tensorflow_file(run_cli):
    name = "cnn_flatten_dense"
    code, out, err = run_cli("detect", fixture_path("keras3", f"{name}.h5"),
                             "--input", fixture_path("keras3", f"{name}.input.npy"),
                             "--expected", fixture_path("keras3", f"{name}.output.npy"), "--json")
    assert code == 0, err
    assert json.loads(out)["source_semantics"] == "correlation"


def test_detect_exits_1_when_nothing_matches(run_cli, tmp_path):
    name = "cnn_flatten_dense"
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 6), np.float32))
    code, out, _ = run_cli("detect", fixture_path("keras3", f"{name}.h5"),
                           "--input", fixture_path("keras3", f"{name}.input.npy"), "--expected", wrong)
    assert code == 1 and "no hypothesis" in out


def onnx_validate(run_cli, name, dst):
    return run_cli("validate", fixture_path("onnx", f"{name}.onnx"), dst,
                   "--input", fixture_path("onnx", f"{name}.input.npy"),
                   "--expected", fixture_path("onnx", f"{name}.output.npy"), "--json")


def onnx_converted(run_cli, tmp_path, name):
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", fixture_path("onnx", f"{name}.onnx"), "-o", out, "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("name, layers", [("torch_cnn", 4), ("helper_autopad_gemm", 4),
                                          ("gru_linear_before_reset", 1), ("lstm_bidirectional", 1)])
def test_onnx_sources_pass_layer_checks_in_onnxruntime_and_the_whole_model_check(run_cli, tmp_path, name, layers):
    """Each weighted layer's own ONNX operator runs in onnxruntime on the stored initializers; an ONNX
    LSTM/GRU graph takes (seq, batch, features) and gives (seq, directions, batch, hidden)."""
    code, out, _ = onnx_validate(run_cli, name, onnx_converted(run_cli, tmp_path, name))
    report = json.loads(out)
    assert code == 0 and report["status"] == "pass", out
    ran = [c for c in report["checks"] if c["check"] == "layer" and c["status"] != "skip"]
    assert len(ran) == layers, report["checks"]
    assert any(c["check"] == "whole-model" and c["status"] == "pass" for c in report["checks"])


def test_swapped_onnx_gru_gates_are_caught_and_named(run_cli, tmp_path):
    good = onnx_converted(run_cli, tmp_path, "gru_linear_before_reset")
    prefix = "gru_linear_before_reset"
    def swap(t):
        for key in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            r, z, n = np.split(t[f"{prefix}.{key}"], 3, axis=0)
            t[f"{prefix}.{key}"] = np.ascontiguousarray(np.concatenate([z, r, n], axis=0))
    code, out, _ = onnx_validate(run_cli, "gru_linear_before_reset",
                                 tamper(good, tmp_path / "bad.safetensors", swap))
    failed = failing(json.loads(out))
    assert code == 1 and "gates in the wrong order" in failed[f"layer {prefix} (GRU)"]["likely_cause"]
    assert "whole model vs recorded output" in failed


def test_flipped_onnx_conv_kernel_is_caught_and_named(run_cli, tmp_path):
    good = onnx_converted(run_cli, tmp_path, "helper_autopad_gemm")
    def flip(t):
        t["conv_upper.weight"] = np.ascontiguousarray(t["conv_upper.weight"][:, :, ::-1, ::-1])
    code, out, _ = onnx_validate(run_cli, "helper_autopad_gemm", tamper(good, tmp_path / "bad.safetensors", flip))
    failed = failing(json.loads(out))
    assert code == 1 and "180-degree flip" in failed["layer conv_upper (Conv)"]["likely_cause"]


def test_validating_an_onnx_source_imports_no_tensorflow(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "gru.safetensors"
    script = ("import sys; from weightport.cli import main; "
              f"assert main(['convert', {str(fixture_path('onnx', 'gru_linear_before_reset.onnx'))!r}, '-o', {str(out)!r}, '--quiet']) == 0; "
              f"assert main(['validate', {str(fixture_path('onnx', 'gru_linear_before_reset.onnx'))!r}, {str(out)!r}]) == 0; "
              "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'framework imported'")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_detect_gives_a_per_layer_answer_when_layers_differ(run_cli, tmp_path):
    """A Keras file whose first kernel is stored flipped (convolution) and its second as is (correlation):
    neither whole-file reading reproduces the recorded output; the per-layer search does."""
    import shutil

    import h5py
    name = "cnn_flatten_dense"
    mixed = tmp_path / "mixed.h5"
    shutil.copy(fixture_path("keras3", f"{name}.h5"), mixed)
    with h5py.File(mixed, "r+") as handle:
        found = []
        handle.visititems(lambda key, item: found.append(key) if key.endswith("kernel") and "conv_a" in key
                          and isinstance(item, h5py.Dataset) else None)
        kernel = handle[found[0]]
        kernel[...] = np.ascontiguousarray(kernel[()][::-1, ::-1])  # HWIO: rows and columns reversed
    code, out, err = run_cli("detect", mixed, "--input", fixture_path("keras3", f"{name}.input.npy"),
                             "--expected", fixture_path("keras3", f"{name}.output.npy"), "--json")
    detection = json.loads(out)
    assert code == 0 and detection["source_semantics"] is None, out + err
    assert detection["per_layer"] == {"conv_a": "convolution", "conv_same_s2": "correlation"}, detection


def test_detect_without_architecture_asks_for_a_spec(run_cli, tmp_path):
    import shutil
    bare = tmp_path / "weights.pkl"
    shutil.copy(fixture_path("theano", "theano_cnn.values.p2.pkl"), bare)
    code, out, err = run_cli("detect", bare, "--input", fixture_path("theano", "theano_cnn.input.npy"),
                             "--expected", fixture_path("theano", "theano_cnn.output.npy"))
    assert code == 2 and "--spec" in err and "internal error" not in err, err
