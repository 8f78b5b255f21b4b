"""Reading Caffe files without Caffe: the binary caffemodel alone (its own layer parameters, decoded from the
wire format by weightport's tables, written by the fixtures' independent writer) gives the net OpenCV ran from
the prototxt; the text parser takes the protobuf text format's corners; the prototxt is found beside the
model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.caffe.test_caffe_opencv import FIXTURES, TOLERANCE, paths, torch_forward
from weightport.formats.caffe.prototxt import parse


@pytest.mark.parametrize("name", FIXTURES)
def test_caffemodel_alone_reproduces_opencv(tmp_path, name):
    """No prototxt: structure and parameters (kernel_h/w, strides, pads, group, dilation, pooling, eltwise
    operation, V1 enum layer types, legacy 4-D blob shapes) all come from the binary."""
    from weightport.api import load
    from weightport.formats.torch.module import canonical_state_dict
    source, _, io = paths(name)
    alone = tmp_path / f"{name}.caffemodel"
    shutil.copy(source, alone)
    model = load(str(alone))
    assert model.source.details["prototxt"] is None
    assert any("no .prototxt" in warning for warning in model.warnings)
    state = {key: value.numpy() for key, value in canonical_state_dict(model).items()}
    np.testing.assert_allclose(torch_forward(model, state, io["input"]), io["output"], atol=TOLERANCE, rtol=0)


def test_prototxt_found_beside_the_model_as_deploy(tmp_path):
    from weightport.api import load
    source, text, _ = paths("conv_axes")
    shutil.copy(source, tmp_path / "weights.caffemodel")
    shutil.copy(text, tmp_path / "deploy.prototxt")
    model = load(str(tmp_path / "weights.caffemodel"))
    assert model.source.details["prototxt"].endswith("deploy.prototxt")


def test_text_format_corners():
    text = r'''
    name: "net"  # a comment
    input: 'da\x74a'  input: "b\101" "c"
    layer < name: "l1" type: "Pooling" pooling_param: { pool: AVE kernel_size: [3, 2] stride: 2; } >
    layer { name: "l2" include { phase: TEST } relu_param { negative_slope: -1.5e-1 } }
    '''
    net = parse(text, "x.prototxt")
    assert net.get("name") == "net" and net.all("input") == ["data", "bAc"]
    first, second = net.all("layer")
    pooling = first.get("pooling_param")
    assert pooling.get("pool") == "AVE" and pooling.all("kernel_size") == [3, 2] and pooling.get("stride") == 2
    assert second.get("include").get("phase") == "TEST"
    assert second.get("relu_param").get("negative_slope") == pytest.approx(-0.15)


@pytest.mark.parametrize("old,new,layer", [('shape { dim: 0 dim: 16 dim: -1 }', 'shape { dim: 0 dim: 7 dim: -1 }', "rows"),
                                           ("slice_point: 5", "slice_point: 9", "cut"),
                                           ("slice_point: 5", "slice_point: 2", "cut")])
def test_a_reshape_or_slice_that_cannot_apply_is_refused_in_one_line(run_cli, tmp_path, old, new, layer):
    source, text, _ = paths("reshape_slice")
    body = open(text).read()
    assert old in body
    (tmp_path / "net.prototxt").write_text(body.replace(old, new))
    code, _, err = run_cli("inspect", source, "--spec", tmp_path / "net.prototxt")
    assert code == 2 and f"{layer!r} cannot apply to its input of shape [8, 5, 4]" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
