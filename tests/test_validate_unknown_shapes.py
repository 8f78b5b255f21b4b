"""Validating a graph that records no shapes (a weights-only Keras file's port, a .t7 without --spec): the
whole-model check runs where it can and is a SKIP with its reason where it cannot, never an internal error.

References: tf.keras's own output of the fixture (fixtures/tf_keras2), OpenCV's output of the Torch7 fixtures.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from tests.conftest import fixture_path


def whole_model(report: dict) -> dict:
    return next(c for c in report["checks"] if c["check"] == "whole-model")


def test_port_of_a_weights_only_file_is_not_run_as_a_whole_model(run_cli, tmp_path):
    """The graph a weights-only source leaves in safetensors has no pooling, flatten or shapes: running it would
    be a guess (it crashed inside torch); it is a skip saying why, and the layer checks still run."""
    out = tmp_path / "weights_only.safetensors"
    code, _, err = run_cli("convert", fixture_path("tf_keras2", "cnn_sequential.save_weights.h5"), "-o", out)
    assert code == 0, err
    x = np.load(fixture_path("tf_keras2", "cnn_sequential.input.npy"))
    channels_first = tmp_path / "x.npy"
    np.save(channels_first, np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    code, stdout, err = run_cli("validate", out, out, "--input", channels_first,
                                "--expected", fixture_path("tf_keras2", "cnn_sequential.output.npy"), "--json")
    assert "internal error" not in err, err
    report = json.loads(stdout)
    check = whole_model(report)
    assert check["status"] == "skip" and "weights-only" in check["reason"], check
    assert any(c["check"] == "layer" and c["status"] == "pass" for c in report["checks"])
    # the kinds it records still give the targets that need them their layers
    code, _, err = run_cli("convert", out, "-o", tmp_path / "again.h5", "--to", "keras")
    assert code == 0, err


def copy_without_spec(tmp_path, name):
    path = tmp_path / f"{name}.t7"
    shutil.copy(fixture_path("torch7", f"{name}.t7"), path)
    pair = np.load(fixture_path("torch7", f"{name}.io.npz"))
    return path, pair["input"], pair["output"]


def test_batchnorm_of_unknown_rank_reproduces_opencv(run_cli, tmp_path):
    """A .t7 without --spec records no shapes: the BatchNorm's rank is the input's, known when it runs."""
    path, x, y = copy_without_spec(tmp_path, "batchnorm_std")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "bn.safetensors"
    assert run_cli("convert", path, "-o", out)[0] == 0
    code, stdout, err = run_cli("validate", path, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy", "--json")
    check = whole_model(json.loads(stdout))
    assert code == 0 and check["status"] == "pass", stdout + err
    # a wrong running variance is still caught by the module of unknown rank
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(out))
    key = next(k for k in tensors if k.endswith("running_var"))
    tensors[key] = tensors[key][::-1].copy()
    from safetensors import safe_open
    with safe_open(str(out), "np") as handle:
        metadata = dict(handle.metadata())
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    code, stdout, _ = run_cli("validate", path, tmp_path / "bad.safetensors", "--input", tmp_path / "x.npy",
                              "--expected", tmp_path / "y.npy", "--json")
    assert code == 1 and whole_model(json.loads(stdout))["status"] == "fail"


def test_input_the_shapeless_graph_cannot_run_is_a_skip(run_cli, tmp_path):
    """A .t7 without --spec takes any height and width, but its Linear does not: torch's size error on an input
    of another size is a skip naming it (the layer checks stand), not an internal error."""
    path, x, y = copy_without_spec(tmp_path, "linear_view")
    np.save(tmp_path / "x.npy", np.ascontiguousarray(x[:, :, :-2, :]))
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "lv.safetensors"
    assert run_cli("convert", path, "-o", out)[0] == 0
    code, stdout, err = run_cli("validate", path, out, "--input", tmp_path / "x.npy", "--expected",
                                tmp_path / "y.npy", "--json")
    assert "internal error" not in err, err
    check = whole_model(json.loads(stdout))
    assert check["status"] == "skip" and "records no input or layer shapes" in check["reason"], check
