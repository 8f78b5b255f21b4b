"""Caffe and Torch7 models to the java target with ``--emit-forward``: the generated Java forward pass, compiled
by javac and run by ``weightport validate`` on the fixture's input, reproduces what OpenCV computed
(cv2.dnn.readNetFromCaffe / readNetFromTorch, recorded beside the fixture and checked live here), Torch7's
Normalize and LogSoftMax, Caffe's LRN (both regions) and Power and ceil-mode pooling whose last window is partial
included; a layer the Java forward pass cannot compute (Slice, SSD's Permute) is refused in one line naming it,
and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest

from tests.caffe import test_caffe_opencv as caffe
from tests.conftest import require
from tests.torch7 import test_torch7_opencv as torch7

JAVA_FIXTURES = [("caffe", name) for name in ("conv_axes", "deconv", "inner_product", "batchnorm_scale",
                                             "eltwise_concat", "prelu", "lrn_power", "pooling_ceil", "v1_layers")] + \
                [("torch7", name) for name in ("conv_mm", "batchnorm_std", "pool_ceil", "inception_concat",
                                               "residual_cadd", "full_dilated_prelu", "linear_normalize",
                                               "normalize_p3", "linear_logsoftmax")]
REFUSED = [("caffe", "reshape_slice", "cut", "Slice")]


def test_java_forward_pass_refuses_the_real_ssd_heads_in_one_line(run_cli, tmp_path):
    """The real res10 detector: its backbone the Java forward pass runs (ceil pooling included), its SSD heads
    (Permute, then the post-processing) it refuses, naming the first one; the weights alone are written."""
    source, _ = caffe.res10_files()
    code, _, err = run_cli("convert", source, "-o", tmp_path / "java", "--to", "java", "--emit-forward")
    assert code == 2 and "layer 'conv4_3_norm_mbox_loc_perm' (Permute)" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "java").exists()
    code, _, err = run_cli("convert", source, "-o", tmp_path / "java", "--to", "java", "--quiet")
    assert code == 0, err


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
