"""A torch LSTM/GRU of num_layers > 1 (tensors ``*_l0``, ``*_l1``, ..., ``*_reverse`` when bidirectional) to the
Keras target: one Keras layer per torch layer, stacked (issue 17).  Truth is torch's own output of the module
holding the weights (or, for Resemblyzer's real 3-layer encoder, the package's recorded output); the Keras 3
model built as a user would stack it loads the converted file with ``load_weights`` and must reproduce it.
A gate order, a transposed kernel, a layer's tensors given to another layer or a swapped direction fails."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from tests.conftest import fixture_path

pytestmark = pytest.mark.requires("torch", "keras")

MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class Stacked(nn.Module):
        def __init__(self, kind="LSTM", bidirectional=False):
            super().__init__()
            self.rnn = getattr(nn, kind)(5, 6, num_layers=3, batch_first=True, bidirectional=bidirectional)
            self.head = nn.Linear(12 if bidirectional else 6, 4)

        def forward(self, x):
            return self.head(self.rnn(x)[0])


    def lstm():
        return Stacked("LSTM")


    def bilstm():
        return Stacked("LSTM", True)


    def gru():
        return Stacked("GRU")


    def bigru():
        return Stacked("GRU", True)
''')


def keras_stack(keras, kind: str, bidirectional: bool):
    """What a Keras user writes for the same network: three RNN layers returning sequences, then Dense."""
    inputs = keras.Input((7, 5))
    x = inputs
    for _ in range(3):
        cell = getattr(keras.layers, kind)(6, return_sequences=True)
        x = keras.layers.Bidirectional(cell)(x) if bidirectional else cell(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


@pytest.mark.parametrize("factory,kind,bidirectional", [("lstm", "LSTM", False), ("bilstm", "LSTM", True),
                                                         ("gru", "GRU", False), ("bigru", "GRU", True)])
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_a_stacked_torch_rnn_is_stacked_keras_layers(factory, kind, bidirectional, suffix, run_cli, tmp_path):
    import keras
    import torch
    (tmp_path / "stacked.py").write_text(MODULE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("stacked_module", tmp_path / "stacked.py")
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)
    torch.manual_seed(7)
    module = getattr(built, factory)().eval()
    for name, parameter in module.named_parameters():  # every bias non-zero, every layer different
        torch.nn.init.uniform_(parameter, -0.6, 0.6)
    torch.save(module.state_dict(), tmp_path / "w.pt")
    x = np.random.default_rng(9).standard_normal((2, 7, 5)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    out = tmp_path / f"k{suffix}"
    code, _, err = run_cli("convert", tmp_path / "w.pt", "-o", out, "--to", "keras",
                           "--arch", f"{tmp_path / 'stacked.py'}:{factory}")
    assert code == 0, err
    model = keras_stack(keras, kind, bidirectional)
    model.load_weights(str(out))
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=0, atol=2e-5)


def test_the_other_layer_orders_fail(run_cli, tmp_path):
    """The check above can fail: the converted file loaded into a stack whose layers are listed in another
    order (layer 2's weights in layer 0 and so on) gives another output."""
    import keras
    import torch
    (tmp_path / "stacked.py").write_text(MODULE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("stacked_module2", tmp_path / "stacked.py")
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)
    torch.manual_seed(8)
    module = built.lstm().eval()
    torch.save(module.state_dict(), tmp_path / "w.pt")
    assert run_cli("convert", tmp_path / "w.pt", "-o", tmp_path / "k.h5", "--to", "keras",
                   "--arch", f"{tmp_path / 'stacked.py'}:lstm")[0] == 0
    x = np.random.default_rng(9).standard_normal((2, 7, 5)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    model = keras_stack(keras, "LSTM", False)
    model.load_weights(str(tmp_path / "k.h5"))
    rnns = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    first, last = rnns[1].get_weights(), rnns[2].get_weights()
    rnns[1].set_weights(last)
    rnns[2].set_weights(first)
    assert np.abs(np.asarray(model(x)) - expected).max() > 1e-3


@pytest.mark.parametrize("target", ["theano", "java"])
def test_targets_without_stacked_rnns_refuse_in_one_line(target, run_cli, tmp_path):
    import torch
    (tmp_path / "stacked.py").write_text(MODULE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("stacked_module3", tmp_path / "stacked.py")
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)
    torch.save(built.lstm().state_dict(), tmp_path / "w.pt")
    code, _, err = run_cli("convert", tmp_path / "w.pt", "-o", tmp_path / "out", "--to", target,
                           "--arch", f"{tmp_path / 'stacked.py'}:lstm")
    assert code == 2 and "num_layers=3" in err and err.count("\n") == 1 and "internal error" not in err


ENCODER = textwrap.dedent('''
    from resemblyzer_encoder import SpeakerEncoder


    class VoiceEncoder(SpeakerEncoder):
        """The network Resemblyzer's VoiceEncoder runs: the encoder without the GE2E loss's two scalars."""

        def __init__(self):
            super().__init__()
            del self.similarity_weight
            del self.similarity_bias
''')


def test_resemblyzer_three_layer_lstm_in_keras_reproduces_the_package(run_cli, tmp_path, monkeypatch):
    """Resemblyzer's real 3-layer LSTM speaker encoder (fetched, Apache-2.0): its checkpoint's network, written
    as Keras weights, in a Keras 3 model of three LSTM layers, Dense + ReLU and the L2 normalisation, gives
    the embedding the package's own VoiceEncoder recorded."""
    import keras
    import torch
    from tests.torch.test_real_checkpoints import RESEMBLYZER, fetched, recorded
    real = fixture_path("real", "torch")
    monkeypatch.syspath_prepend(real)
    state = torch.load(fetched(RESEMBLYZER), map_location="cpu", weights_only=True)["model_state"]
    torch.save({k: v for k, v in state.items() if not k.startswith("similarity_")}, tmp_path / "encoder.pt")
    (tmp_path / "voice.py").write_text(ENCODER)
    out = tmp_path / "encoder.h5"
    code, _, err = run_cli("convert", tmp_path / "encoder.pt", "-o", out, "--to", "keras",
                           "--arch", f"{tmp_path / 'voice.py'}:VoiceEncoder", "--input-shape", "160,40")
    assert code == 0, err
    inputs = keras.Input((160, 40))
    x = keras.layers.LSTM(256, return_sequences=True)(inputs)
    x = keras.layers.LSTM(256, return_sequences=True)(x)
    x = keras.layers.LSTM(256)(x)  # the top layer's final h: torch's hidden[-1]
    x = keras.layers.Dense(256, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.UnitNormalization()(x))
    model.load_weights(str(out))
    x_path, y_path = recorded("resemblyzer")
    np.testing.assert_allclose(np.asarray(model(np.load(x_path))), np.load(y_path), rtol=0, atol=1e-5)
    assert os.path.getsize(out) > 0


class Wrapped:
    """nn.LSTM inside a module returning only its sequence, exported with a fixed batch (torch.onnx then writes
    its zero initial states as Expand of zero constants)."""

    @staticmethod
    def make(lstm):
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = lstm

            def forward(self, x):
                return self.rnn(x)[0]
        return Net().eval()


@pytest.mark.requires("onnx", "onnxruntime")
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "wrapped"])
def test_a_torch_onnx_export_of_a_stacked_lstm_is_stacked_keras_layers(wrapped, run_cli, tmp_path):
    """torch.onnx writes nn.LSTM(num_layers=2) as two LSTM nodes whose zero initial states are computed
    (ConstantOfShape, dynamic batch) or Expand of zero constants (fixed batch); the latter are the RNN's default
    (accounted for as folded), no constant is left outside a layer, so the file converts to Keras, and two
    stacked Keras LSTMs give torch's output; the canonical module gives onnxruntime's at another batch size."""
    import json
    import keras
    import onnxruntime
    import torch
    torch.manual_seed(10)
    lstm = torch.nn.LSTM(5, 6, num_layers=2, batch_first=True).eval()
    for parameter in lstm.parameters():
        torch.nn.init.uniform_(parameter, -0.6, 0.6)
    module = Wrapped.make(lstm) if wrapped else lstm
    x = np.random.default_rng(12).standard_normal((2, 7, 5)).astype(np.float32)
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(x),), str(tmp_path / "s.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"] if wrapped else ["y", "hn", "cn"],
                          dynamic_axes=None if wrapped else {"x": {0: "n"}})
        expected = lstm(torch.from_numpy(x))[0].numpy()
    code, _, err = run_cli("convert", tmp_path / "s.onnx", "-o", tmp_path / "s.h5", "--to", "keras")
    assert code == 0, err
    inputs = keras.Input((7, 5))
    y = keras.layers.LSTM(6, return_sequences=True)(keras.layers.LSTM(6, return_sequences=True)(inputs))
    model = keras.Model(inputs, y)
    model.load_weights(str(tmp_path / "s.h5"))
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=0, atol=2e-5)
    code, out, err = run_cli("explain", tmp_path / "s.onnx", "--json", "--to", "npz")
    constants = json.loads(out)["constants"].values()
    assert not [where for how, where in constants if how == "kept"]
    if wrapped:
        assert [where for how, where in constants if how == "folded" and "zero initial state" in where]
    from tests.onnx.test_control_flow_and_states import converted_outputs
    other = np.random.default_rng(13).standard_normal((2 if wrapped else 3, 7, 5)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": other})))
    got = converted_outputs(tmp_path / "s.onnx", {"x": other}, tmp_path)
    for name in want:  # hn, cn: both layers' final states, (layers, batch, hidden) as torch gives them
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)
