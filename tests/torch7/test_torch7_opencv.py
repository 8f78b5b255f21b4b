"""Torch7 .t7 models against OpenCV (cv2.dnn.readNetFromTorch, opencv-python-headless < 5), the independent
oracle: each fixture (one model per module kind, written by weightport.formats.torch7.encode, one of them
big-endian with 4-byte longs) is converted to torch and ONNX with the real CLI and must reproduce OpenCV's
forward pass, live and recorded.  Each trap is put back on purpose (a flipped kernel, an MM weight unflattened
in the wrong order, floor pooling, running_std read as a variance, an H, W, C flatten, Normalize's p or eps
ignored, LogSoftMax as SoftMax) and must fail."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.caffe.test_caffe_opencv import TOLERANCE, flip_kernel, hwc_flatten, pool_attr, torch_forward
from tests.conftest import fixture_path, require

FIXTURES = ("conv_mm", "conv_cudnn", "batchnorm_var", "batchnorm_std", "pool_ceil", "linear_view",
            "inception_concat", "residual_cadd", "full_dilated_prelu", "conv_mm_big_endian_long4", "linear_normalize",
            "normalize_p3", "linear_logsoftmax")
TWINS = {"conv_mm_big_endian_long4": "conv_mm"}  # OpenCV reads only its machine's byte order


def paths(name: str) -> tuple[str, dict[str, np.ndarray]]:
    base = fixture_path("torch7", name)
    return base + ".t7", dict(np.load(base + ".io.npz"))


def opencv_forward(name: str, x: np.ndarray) -> np.ndarray:
    cv2 = require("cv2")
    net = cv2.dnn.readNetFromTorch(paths(TWINS.get(name, name))[0])
    net.setInput(np.ascontiguousarray(x, np.float32))
    return net.forward()


def converted(run_cli, tmp_path, name: str, to: str = "torch", ext: str = ".safetensors") -> str:
    out = str(tmp_path / f"{name}{ext}")
    code, _, err = run_cli("convert", paths(name)[0], "-o", out, "--to", to, "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_torch_reproduces_opencv(run_cli, tmp_path, name):
    from weightport.api import load
    source, io = paths(name)
    live = opencv_forward(name, io["input"])
    np.testing.assert_allclose(live, io["output"], atol=1e-6)
    ours = torch_forward(load(source), load_file(converted(run_cli, tmp_path, name)), io["input"])
    assert ours.shape == live.shape
    np.testing.assert_allclose(ours, live, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_onnx_reproduces_opencv_in_onnxruntime(run_cli, tmp_path, name):
    ort = require("onnxruntime")
    _, io = paths(name)
    session = ort.InferenceSession(converted(run_cli, tmp_path, name, "onnx", ".onnx"))
    ours = session.run(None, {session.get_inputs()[0].name: io["input"]})[0]
    np.testing.assert_allclose(ours.reshape(io["output"].shape), opencv_forward(name, io["input"]),
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", FIXTURES)
def test_validate_checks_every_weighted_layer_with_opencv(run_cli, tmp_path, name):
    require("cv2")
    source, io = paths(name)
    out = converted(run_cli, tmp_path, name)
    np.save(tmp_path / "x.npy", io["input"])
    np.save(tmp_path / "y.npy", io["output"])
    code, stdout, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected", tmp_path / "y.npy")
    assert code == 0, stdout + err
    assert "result: PASS" in stdout and "SKIP" not in stdout and "UNCHECKED" not in stdout, stdout


@pytest.mark.parametrize("name", ["conv_mm", "linear_normalize", "normalize_p3", "linear_logsoftmax"])
def test_validate_without_recorded_output_runs_opencv_on_the_source(run_cli, tmp_path, name):
    require("cv2")
    code, stdout, err = run_cli("validate", paths(name)[0], converted(run_cli, tmp_path, name))
    assert code == 0, stdout + err
    assert "PASS whole model vs OpenCV running the source (seed 0, 2 samples)" in stdout, stdout


def test_a_big_endian_file_is_not_run_by_opencv_and_says_why(run_cli, tmp_path):
    name = "conv_mm_big_endian_long4"
    code, stdout, err = run_cli("validate", paths(name)[0], converted(run_cli, tmp_path, name))
    assert "SKIP whole model vs recorded output" in stdout and "big-endian" in stdout, stdout + err
    assert "PASS whole model" not in stdout


def mm_unflattened_as_h_w_i(layer: str):
    """An MM weight (nOut, nIn*kH*kW) unflattened as if it were (nOut, kH*kW*nIn)."""
    def edit(_model, state):
        weight = state[f"{layer}.weight"]
        out, channels, height, width = weight.shape
        state[f"{layer}.weight"] = np.ascontiguousarray(
            weight.reshape(out, height, width, channels).transpose(0, 3, 1, 2))
    return edit


def std_read_as_variance(layer: str):
    def edit(_model, state):
        eps = 1e-3  # the fixtures' eps
        state[f"{layer}.running_var"] = (1.0 / np.sqrt(state[f"{layer}.running_var"] + eps)).astype(np.float32)
    return edit


MISTAKES = {
    "flipped kernel": ("conv_cudnn", flip_kernel("0")),
    "flipped MM kernel": ("conv_mm", flip_kernel("0")),
    "MM weight unflattened H, W, C": ("conv_mm", mm_unflattened_as_h_w_i("0")),
    "flipped transposed kernel": ("full_dilated_prelu", flip_kernel("3")),
    "floor pooling": ("pool_ceil", pool_attr("0", "ceil_mode", False)),
    "running_std read as the variance": ("batchnorm_std", std_read_as_variance("1")),
    "H, W, C flatten": ("linear_view", hwc_flatten("4", 4, 2, 2)),
    "Normalize(3) run as an L2 norm": ("normalize_p3", pool_attr("3", "p", 2.0)),
    "Normalize's eps dropped": ("normalize_p3", pool_attr("3", "eps", 0.0)),
    "Normalize over the batch axis": ("linear_normalize", pool_attr("4", "axis", 0)),
    "LogSoftMax run as SoftMax": ("linear_logsoftmax", pool_attr("4", "log", False)),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_trap_put_back_fails_against_opencv(run_cli, tmp_path, mistake):
    from weightport.api import load
    name, edit = MISTAKES[mistake]
    source, io = paths(name)
    live = opencv_forward(name, io["input"])
    state = load_file(converted(run_cli, tmp_path, name))
    np.testing.assert_allclose(torch_forward(load(source), dict(state), io["input"]), live, atol=TOLERANCE)
    wrong = torch_forward(load(source), dict(state), io["input"], edit)
    assert wrong.shape != live.shape or np.abs(wrong - live).max() > 100 * TOLERANCE, mistake


def test_inspect_and_explain_name_the_rule_and_the_std_conversion(run_cli):
    code, stdout, err = run_cli("inspect", paths("batchnorm_std")[0])
    assert code == 0, err
    assert "torch7-correlation" in stdout and "nn.SpatialBatchNormalization" in stdout
    assert "OIHW (stored o i h w correlation kernel) [rule: torch7-correlation]" in stdout, stdout
    assert "running_var: (4,) float32 O (stored o) [rule: nn before 2016 stores running_std = 1/sqrt(var + eps)]" \
        in stdout, stdout
    code, stdout, err = run_cli("explain", paths("batchnorm_std")[0], "--to", "torch")
    assert code == 0, err
    assert "running_std -> variance" in stdout
    code, stdout, err = run_cli("explain", paths("conv_mm")[0], "--to", "torch")
    assert code == 0 and "0.weight: rearrange O(IHW) -> OIHW i=3 h=3 w=2" in stdout, stdout
