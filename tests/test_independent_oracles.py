"""Oracles that are not weightport's own code: converted weights run in hand-written torch.nn modules.

Most end-to-end tests run converted weights through weightport's own torch module
(formats/torch/module.py), which shares the converter's assumptions: a bug in both (a Flatten order, a
'same' pad, a gate order) cancels out. The modules here are plain torch.nn code written from each
fixture's generator script (fixtures/*/make_*.py), with no weightport import: the layer names are the
source's, every pad is spelled out, and a PyTorch user would write the same. Each loads the file that
``weightport convert`` wrote with ``load_state_dict(strict=True)`` (so a missing, extra or misshaped
tensor fails) and must reproduce the output the source framework recorded.

Tolerance: float32 sums of up to 714 products (the heads after a Flatten) and a few recurrent steps,
added in another order than the source framework's. Measured: at most 5.4 float32 ulps of the output
scale (1.4e-4 on outputs up to 214, keras3/functional_residual_flatten), 0.1 to 2.4 ulps elsewhere. We
allow 16 ulps of the output scale (values of at least 1 count as 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import fixture_path, optional_module

torch = optional_module("torch")
nn = torch.nn if torch else None
F = torch.nn.functional if torch else None
Module = nn.Module if torch else object  # the file imports without torch; its tests then skip (or fail under CI)
pytestmark = pytest.mark.requires("torch")

ULPS = 16


# ------------------------------------------------------------------------------- hand-written modules
# Plain torch.nn, written from the fixtures' generator scripts; attribute names are the source's layer names.

def crop(x, rows: tuple[int, int], cols: tuple[int, int]):
    """Keras Cropping2D on an NCHW map."""
    return x[:, :, rows[0]:x.shape[2] - rows[1], cols[0]:x.shape[3] - cols[1]]


class Separable(Module):
    """Keras SeparableConv2D: a bias-free depthwise conv, then a 1x1 conv with the bias."""

    def __init__(self, channels: int, kernel, multiplier: int, out: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels * multiplier, kernel, stride=stride, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels * multiplier, out, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class FullPReLU(Module):
    """Keras PReLU without shared axes: one alpha per (C, H, W) element."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape))

    def forward(self, x):
        return torch.where(x >= 0, x, self.weight * x)


class DepthwiseSameCNN(Module):
    """fixtures/tf_keras2 cnn_sequential: Conv2D(4, (3, 2), relu), BatchNormalization(1e-3),
    DepthwiseConv2D((2, 3), depth_multiplier=2, 'same'), SeparableConv2D(5, (3, 2), strides=2), PReLU,
    Flatten, Dense(6) on a (9, 11, 3) input."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(3, 4, (3, 2))
        self.batch_normalization = nn.BatchNorm2d(4, eps=1e-3)
        self.depthwise_conv2d = nn.Conv2d(4, 8, (2, 3), groups=4)
        self.separable_conv2d = Separable(8, (3, 2), 1, 5, stride=2)
        self.p_re_lu = FullPReLU((5, 3, 5))
        self.dense = nn.Linear(75, 6)

    def forward(self, x):
        x = self.batch_normalization(F.relu(self.conv2d(x)))
        # TensorFlow 'same', stride 1: a kernel of 2 rows pads 0 above and 1 below, of 3 columns 1 and 1
        x = self.depthwise_conv2d(F.pad(x, (1, 1, 0, 1)))
        x = self.p_re_lu(self.separable_conv2d(x))
        return self.dense(x.flatten(1))


class ResidualFlatten(Module):
    """residual_trunk of fixtures/keras3 and fixtures/keras_theano (make_*.py) with Flatten -> Dense(4):
    stem Conv2D(4, 3x3, 'same') -> branch Conv2D(4, (1, 2), 'same') -> Add -> [DepthwiseConv2D((3, 2),
    depth_multiplier=2) | SeparableConv2D] -> crops -> Concatenate -> Conv2DTranspose(3, (3, 2), strides 2)
    on a (10, 8, 3) input. ``branch_cols``: where the 'same' pad of the 2-column kernel goes."""

    def __init__(self, branch_cols, separable: tuple, crops: tuple, features: int):
        super().__init__()
        kernel, multiplier, out = separable
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, (1, 2))
        self.depthwise = nn.Conv2d(4, 8, (3, 2), groups=4)
        self.separable = Separable(4, kernel, multiplier, out)
        self.deconv = nn.ConvTranspose2d(8 + out, 3, (3, 2), stride=2)
        self.head = nn.Linear(features, 4)
        self.branch_cols, self.crops = branch_cols, crops

    def forward(self, x):
        a = self.stem(x)
        x = a + self.branch(F.pad(a, self.branch_cols))
        d = crop(self.depthwise(x), *self.crops[0])
        s = crop(self.separable(x), *self.crops[1])
        return self.head(self.deconv(torch.cat([d, s], dim=1)).flatten(1))


class BidirectionalStack(Module):
    """fixtures/tf_keras2 rnn_stack: Bidirectional(LSTM(3, return_sequences)), GRU(5, return_sequences),
    TimeDistributed(Dense(3)), Bidirectional(GRU(2)) on (7, 4) sequences."""

    def __init__(self):
        super().__init__()
        self.bidirectional = nn.LSTM(4, 3, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.time_distributed = nn.Linear(5, 3)
        self.bidirectional_1 = nn.GRU(3, 2, batch_first=True, bidirectional=True)

    def forward(self, x):
        x = self.time_distributed(self.gru(self.bidirectional(x)[0])[0])
        final = self.bidirectional_1(x)[1]  # (directions, batch, hidden): each direction's last state
        return torch.cat([final[0], final[1]], dim=1)


class ConvLstmGru(Module):
    """conv1d_rnn (fixtures/keras3) and k2_conv1d_lstm (fixtures/keras_theano): Conv1D(5, 3), LSTM(4,
    return_sequences), GRU(3), Dense(2) on (12, 3) sequences."""

    def __init__(self, dilation: int):
        super().__init__()
        self.conv1d = nn.Conv1d(3, 5, 3, dilation=dilation)
        self.lstm = nn.LSTM(5, 4, batch_first=True)
        self.gru = nn.GRU(4, 3, batch_first=True)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        x = self.conv1d(x.transpose(1, 2)).transpose(1, 2)
        return self.out(self.gru(self.lstm(x)[0])[1][0])


class OnnxRnn(Module):
    """fixtures/onnx lstm_bidirectional / gru_linear_before_reset: one ONNX LSTM or GRU node, input
    (seq, batch, features), output Y (seq, directions, batch, hidden)."""

    def __init__(self, name: str, rnn):
        super().__init__()
        self.name = name
        self.add_module(name, rnn)

    def forward(self, x):
        rnn = getattr(self, self.name)
        y = rnn(x)[0]  # (seq, batch, directions * hidden)
        seq, batch, _ = y.shape
        directions = 2 if rnn.bidirectional else 1
        return y.reshape(seq, batch, directions, rnn.hidden_size).permute(0, 2, 1, 3)


def nhwc_to_nchw(x):
    return x.permute(0, 3, 1, 2)


def as_is(x):
    return x


# fixture -> (module, what the source's input becomes for it)
CASES = {
    "tf_keras2/cnn_sequential": (DepthwiseSameCNN, nhwc_to_nchw),
    # TensorFlow 'same' pads the 2-column kernel after; Keras 3 separable: (2, 3), depth_multiplier 2, 5 out
    "keras3/functional_residual_flatten": (
        lambda: ResidualFlatten((0, 1, 0, 0), ((2, 3), 2, 5), (((0, 0), (0, 1)), ((1, 0), (0, 0))), 3 * 17 * 12),
        nhwc_to_nchw),
    # Keras 2.3.1 on Theano pads it before ('half' then a crop); separable: (3, 2), depth_multiplier 1, 8 out
    "keras_theano/k2_functional_residual_flatten": (
        lambda: ResidualFlatten((1, 0, 0, 0), ((3, 2), 1, 8), (((0, 0), (0, 0)), ((0, 0), (0, 0))), 3 * 17 * 14),
        nhwc_to_nchw),
    "tf_keras2/rnn_stack": (BidirectionalStack, as_is),
    "keras3/conv1d_rnn": (lambda: ConvLstmGru(dilation=2), as_is),
    "keras_theano/k2_conv1d_lstm": (lambda: ConvLstmGru(dilation=1), as_is),
    "onnx/lstm_bidirectional": (lambda: OnnxRnn("lstm_bidirectional", nn.LSTM(2, 3, bidirectional=True)), as_is),
    "onnx/gru_linear_before_reset": (lambda: OnnxRnn("gru_linear_before_reset", nn.GRU(2, 3)), as_is),
}
SOURCES = {"onnx": "{}.onnx"}


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_hand_written_torch_module_reproduces_the_source(run_cli, tmp_path, fixture):
    from safetensors.torch import load_file
    folder, name = fixture.split("/")
    source = fixture_path(folder, SOURCES.get(folder, "{}.h5").format(name))
    out = tmp_path / f"{name}.safetensors"
    code, _, err = run_cli("convert", source, "-o", out, "--quiet")
    assert code == 0, err
    build, prepare = CASES[fixture]
    module = build().eval()
    module.load_state_dict(load_file(str(out)), strict=True)
    x = torch.from_numpy(np.load(fixture_path(folder, f"{name}.input.npy")))
    expected = np.load(fixture_path(folder, f"{name}.output.npy"))
    with torch.no_grad():
        got = module(prepare(x)).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ULPS * np.finfo(np.float32).eps * scale)
