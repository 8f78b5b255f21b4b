"""PReLU slopes: one per channel is torch.nn.PReLU's (C,) in the canonical model, whether it comes from
torch.onnx (a (C, 1, 1) initializer) or from Keras's PReLU(shared_axes=[1, 2]) ((1, 1, C) alpha); one per
element keeps its full shape.  Checked against torch, onnxruntime and Keras 3 on seeded non-square data
with a different slope per channel, so a slope read on the wrong axis or rows in the wrong order fail."""

from __future__ import annotations

import keras
import numpy as np
import onnxruntime as ort
import torch
from safetensors.numpy import load_file
from torch import nn


def torch_prelu_net() -> nn.Module:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 5, (3, 2)), nn.PReLU(5), nn.Conv2d(5, 4, (2, 3)), nn.PReLU(4))
    with torch.no_grad():
        for prelu in (net[1], net[3]):
            prelu.weight.copy_(torch.linspace(-0.9, 0.7, prelu.weight.numel()))  # distinct, some negative
    return net.eval()


def test_torch_prelu_through_onnx_loads_back_into_torch_and_runs_in_onnxruntime(run_cli, tmp_path):
    net = torch_prelu_net()
    x = torch.from_numpy(np.random.RandomState(5).standard_normal((2, 3, 7, 6)).astype(np.float32))
    with torch.no_grad():
        expected = net(x).numpy()
    source = tmp_path / "prelu.onnx"
    torch.onnx.export(net, (x,), str(source), dynamo=False, opset_version=17, input_names=["input"])
    pt, graph, back, direct = (tmp_path / n for n in ("w.pt", "w.onnx", "back.safetensors", "direct.safetensors"))
    for out in (pt, graph, direct):
        code, _, err = run_cli("convert", source, "-o", out, "--quiet")
        assert code == 0, err
    state = torch.load(pt, weights_only=True)
    assert state["1.weight"].shape == (5,) and state["3.weight"].shape == (4,)  # torch.nn.PReLU's own shape
    fresh = nn.Sequential(nn.Conv2d(3, 5, (3, 2)), nn.PReLU(5), nn.Conv2d(5, 4, (2, 3)), nn.PReLU(4)).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    code, _, err = run_cli("convert", graph, "-o", back, "--quiet")
    assert code == 0, err
    returned, original = load_file(str(back)), load_file(str(direct))
    assert sorted(returned) == sorted(original)
    for key, array in original.items():
        assert array.dtype == returned[key].dtype and np.array_equal(array, returned[key]), key


def keras_shared_prelu(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((7, 6, 3))
    y = keras.layers.Conv2D(5, (3, 2))(inputs)
    y = keras.layers.PReLU(shared_axes=[1, 2], alpha_initializer=keras.initializers.RandomUniform(-1, 1))(y)
    y = keras.layers.Conv2D(4, (2, 3))(y)
    return keras.Model(inputs, y)


def test_keras_shared_axes_prelu_is_torch_per_channel_and_comes_back(run_cli, tmp_path):
    model = keras_shared_prelu(6)
    source, pt, back = tmp_path / "prelu.h5", tmp_path / "w.pt", tmp_path / "back.h5"
    model.save(str(source))
    x = np.random.RandomState(7).standard_normal((2, 7, 6, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    code, _, err = run_cli("convert", source, "-o", pt, "--quiet")
    assert code == 0, err
    state = torch.load(pt, weights_only=True)
    key = next(k for k in state if k.startswith("p_re_lu"))
    assert state[key].shape == (5,)
    conv = [k[: -len(".weight")] for k in state if k.endswith(".weight") and state[k].dim() == 4]
    net = nn.Sequential(nn.Conv2d(3, 5, (3, 2)), nn.PReLU(5), nn.Conv2d(5, 4, (2, 3))).eval()
    net.load_state_dict({"0.weight": state[f"{conv[0]}.weight"], "0.bias": state[f"{conv[0]}.bias"],
                         "1.weight": state[key], "2.weight": state[f"{conv[1]}.weight"],
                         "2.bias": state[f"{conv[1]}.bias"]}, strict=True)
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    middle = tmp_path / "w.safetensors"  # carries the canonical architecture, as .pt cannot
    for src, out in ((source, middle), (middle, back)):
        code, _, err = run_cli("convert", src, "-o", out, "--to", "torch" if out == middle else "keras", "--quiet")
        assert code == 0, err
    other = keras_shared_prelu(8)
    other.load_weights(str(back))
    for a, b in zip(model.weights, other.weights):
        assert a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b)), a.path
