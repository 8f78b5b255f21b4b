"""Caffe and Torch7 models to the java target with ``--emit-forward``: the generated Java forward pass, compiled
by javac and run by ``weightport validate`` on the fixture's input, reproduces what OpenCV computed
(cv2.dnn.readNetFromCaffe / readNetFromTorch, recorded beside the fixture and checked live here), Torch7's
Normalize and LogSoftMax and Caffe's Power included; a layer the Java forward pass cannot compute (LRN, Slice) is
refused in one line naming it, and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest

from tests.caffe import test_caffe_opencv as caffe
from tests.conftest import require
from tests.torch7 import test_torch7_opencv as torch7

JAVA_FIXTURES = [("caffe", name) for name in ("conv_axes", "deconv", "inner_product", "batchnorm_scale",
                                             "eltwise_concat", "prelu")] + \
                [("torch7", name) for name in ("conv_mm", "batchnorm_std", "inception_concat", "residual_cadd",
                                               "full_dilated_prelu")]
REFUSED = [("caffe", "lrn_power", "lrn_across", "LRN"),
           ("caffe", "reshape_slice", "cut", "Slice")]


def source_and_opencv(fmt: str, name: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The source file, its recorded input, and OpenCV's output for it computed live (equal to the recorded one)."""
    if fmt == "caffe":
        source, text, io = caffe.paths(name)
        live = caffe.opencv_forward(text, source, io["input"])
    else:
        source, io = torch7.paths(name)
        live = torch7.opencv_forward(name, io["input"])
    np.testing.assert_allclose(live, io["output"], atol=1e-6)
    return source, io["input"], live


JAVA_FIXTURES += [("torch7", name) for name in ("linear_normalize", "normalize_p3", "linear_logsoftmax")]


def without_lrn(tmp_path) -> str:
    """lrn_power's prototxt with its two LRN layers taken out (each Power reads what its LRN read)."""
    _, text, _ = caffe.paths("lrn_power")
    layers = open(text).read().split("layer {")
    kept = [part for part in layers if 'type: "LRN"' not in part]
    body = "layer {".join(kept).replace('bottom: "lrn_across"', 'bottom: "conv1"').replace(
        'bottom: "lrn_within"', 'bottom: "relu1"')
    path = tmp_path / "power.prototxt"
    path.write_text(body)
    return str(path)


def test_java_forward_pass_computes_caffe_power_as_opencv(run_cli, tmp_path):
    """Power ((shift + scale x)^power, a square and a square root) in the Java forward pass against OpenCV."""
    require("jdk")
    source, _, io = caffe.paths("lrn_power")
    text = without_lrn(tmp_path)
    live = caffe.opencv_forward(text, source, io["input"])
    out = tmp_path / "java"
    code, _, err = run_cli("convert", source, "--spec", text, "-o", out, "--to", "java", "--emit-forward", "--quiet")
    assert code == 0, err
    np.save(tmp_path / "x.npy", io["input"])
    np.save(tmp_path / "y.npy", live)
    code, stdout, err = run_cli("validate", source, out, "--spec", text, "--input", tmp_path / "x.npy",
                                "--expected", tmp_path / "y.npy")
    assert code == 0 and "PASS whole model in Java" in stdout, stdout + err


@pytest.mark.parametrize("fmt,name", JAVA_FIXTURES)
def test_java_forward_pass_reproduces_opencv(run_cli, tmp_path, fmt, name):
    require("jdk")
    require("cv2")
    source, x, live = source_and_opencv(fmt, name)
    out = tmp_path / "java"
    code, _, err = run_cli("convert", source, "-o", out, "--to", "java", "--emit-forward", "--quiet")
    assert code == 0, err
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", live)
    code, stdout, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected", tmp_path / "y.npy")
    assert code == 0, stdout + err
    assert "PASS whole model in Java (the model class, float32) vs recorded output" in stdout, stdout
    assert "result: PASS" in stdout and "SKIP" not in stdout, stdout


@pytest.mark.parametrize("fmt,name,layer,what", REFUSED)
def test_java_forward_pass_refuses_what_it_cannot_compute_in_one_line(run_cli, tmp_path, fmt, name, layer, what):
    source = caffe.paths(name)[0] if fmt == "caffe" else torch7.paths(name)[0]
    code, _, err = run_cli("convert", source, "-o", tmp_path / "java", "--to", "java", "--emit-forward")
    assert code == 2 and f"layer {layer!r}" in err and what in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "java").exists()
