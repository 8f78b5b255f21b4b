"""Keras and ONNX outputs checked in their own runtimes (issue 19), by an oracle that shares none of
weightport's reading or layout code with the writer.

Each correct conversion of a real fixture validates with exit 0 against the output its source framework
recorded; the written file is then edited the way a writer bug would leave it (with h5py or onnx, never
weightport) and the gate fails with exit 1, naming the layer.  A layer that truly cannot be checked leaves
the result INCOMPLETE (exit 3) with its reason.  Keras outputs: legacy ``.h5`` for ``load_weights`` and
Keras 3 ``.weights.h5``, read as Keras lays them out and run by Keras 3; ONNX outputs: run by onnxruntime,
whole and node by node.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from tests.conftest import fixture_path, optional_module

onnx = optional_module("onnx")

pytestmark = pytest.mark.requires("tensorflow", "keras", "onnx", "onnxruntime", "torch")

KERAS = [".h5", ".weights.h5"]
SOURCES = {"onnx": ".onnx", "theano": ".py2.pkl"}


def source_path(folder: str, name: str) -> str:
    return fixture_path(folder, name + SOURCES.get(folder, ".h5"))


def convert(run_cli, tmp_path, folder, name, suffix, *options):
    out = tmp_path / f"{name}{suffix}"
    code, _, err = run_cli("convert", source_path(folder, name), "-o", out, "--to",
                           "onnx" if suffix == ".onnx" else "keras", "--quiet", *options)
    assert code == 0, err
    return out


def validate(run_cli, folder, name, converted, recorded=True):
    pair = ["--input", fixture_path(folder, f"{name}.input.npy"),
            "--expected", fixture_path(folder, f"{name}.output.npy")] if recorded else []
    code, out, err = run_cli("validate", source_path(folder, name), converted, "--json", *pair)
    assert out, err
    return code, json.loads(out)


def assert_fails_naming(code, report, layer, keras_class, cause):
    """FAIL (exit 1): the layer's check fails with its likely cause, and the whole model's names that layer
    as the first diverging one."""
    failure = failed_layer(report, layer)
    assert code == 1 and report["status"] == "fail"
    assert failure["name"] == f"layer {layer} ({keras_class})" and cause in (failure["likely_cause"] or ""), failure
    whole = [c for c in report["checks"] if c["check"] == "whole-model" and c["status"] == "fail"]
    assert whole and whole[0]["likely_cause"].startswith(f"first diverging layer {layer} "), whole


def failed_layer(report, layer):
    found = [c for c in report["checks"] if c["status"] == "fail" and c.get("layer") == layer]
    assert found, json.dumps(report["checks"], indent=1)
    return found[0]


# ------------------------------------------------------------------------------ editing the written files


def keras_dataset(handle, layer, index):
    """A layer's ``index``-th array as Keras's own file structure holds it: a legacy group lists its
    datasets in ``weight_names``; Keras 3 keeps ``vars/0..n`` in groups whose ``name`` attribute is the
    layer's (an RNN's under ``cell/``)."""
    root = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" in root.attrs:
        name = root[layer].attrs["weight_names"][index]
        return root[layer][name.decode() if isinstance(name, bytes) else name]
    groups = []
    handle.visititems(lambda path, item: groups.append(item) if isinstance(item, h5py.Group)
                      and path.endswith("vars") and item.attrs.get("name") == layer and len(item) else None)
    assert len(groups) == 1, (layer, groups)
    return groups[0][str(index)]


def tamper_keras(good, out, layer, change, indices=(0,)):
    shutil.copy(good, out)
    with h5py.File(out, "r+") as handle:
        for index in indices:
            dataset = keras_dataset(handle, layer, index)
            dataset[...] = change(dataset[()])
    return out


def onnx_weights(model, layer, op):
    """The ``op`` node of ``layer`` (its exporter scope) and its initializers by input position."""
    node = next(n for n in model.graph.node if n.op_type == op and n.name.strip("/").split("/")[0] == layer)
    initializers = {t.name: t for t in model.graph.initializer}
    return {k: initializers[name] for k, name in enumerate(node.input) if name in initializers}


def tamper_onnx(good, out, layer, op, change, positions=(1,)):
    model = onnx.load(str(good))
    weights = onnx_weights(model, layer, op)
    for position in positions:
        tensor = weights[position]
        tensor.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(change(onnx.numpy_helper.to_array(tensor))),
                                                     tensor.name))
    onnx.save(model, str(out))
    return out


def swap_blocks(array, axis, count, first, second):
    blocks = np.split(array, count, axis=axis)
    blocks[first], blocks[second] = blocks[second], blocks[first]
    return np.concatenate(blocks, axis=axis)


# ------------------------------------------------------------------------------------- correct conversions


@pytest.mark.parametrize("suffix", KERAS + [".onnx"])
@pytest.mark.parametrize("folder,name", [("keras3", "cnn_flatten_dense"), ("keras3", "functional_residual_flatten"),
                                         ("keras3", "conv1d_rnn"), ("tf_keras2", "cnn_sequential"),
                                         ("tf_keras2", "embedding_conv1d"), ("keras_theano", "k2_cnn_channels_last"),
                                         ("onnx", "torch_cnn"), ("onnx", "lstm_bidirectional"),
                                         ("theano", "theano_cnn")])
def test_correct_conversions_pass_in_the_targets_own_runtime(run_cli, tmp_path, folder, name, suffix):
    code, report = validate(run_cli, folder, name, convert(run_cli, tmp_path, folder, name, suffix))
    assert code == 0 and report["status"] == "pass", json.dumps(report, indent=1)
    assert report["checks"][0]["check"] == "names" and report["checks"][0]["status"] == "pass"
    assert any(c["check"] == "layer" and c["status"] == "pass" for c in report["checks"])


@pytest.mark.parametrize("suffix", KERAS + [".onnx"])
def test_a_rebuildable_source_is_checked_whole_against_its_recorded_output(run_cli, tmp_path, suffix):
    code, report = validate(run_cli, "keras3", "functional_residual",
                            convert(run_cli, tmp_path, "keras3", "functional_residual", suffix))
    whole = [c for c in report["checks"] if c["check"] == "whole-model"]
    assert code == 0 and [c["status"] for c in whole] == ["pass"], whole
    assert whole[0]["name"] == "whole model vs recorded output"


@pytest.mark.parametrize("folder,name,suffix,runtime", [("keras3", "cnn_flatten_dense", ".h5", "Keras 3"),
                                                        ("keras3", "conv1d_rnn", ".weights.h5", "Keras 3"),
                                                        ("keras3", "conv1d_rnn", ".onnx", "Keras 3"),
                                                        ("onnx", "torch_cnn", ".onnx", "onnxruntime")])
def test_without_recorded_outputs_the_source_run_by_its_own_framework_is_the_reference(
        run_cli, tmp_path, folder, name, suffix, runtime):
    good = convert(run_cli, tmp_path, folder, name, suffix)
    code, report = validate(run_cli, folder, name, good, recorded=False)
    whole = [c for c in report["checks"] if c["check"] == "whole-model"]
    assert code == 0 and whole and whole[0]["status"] == "pass", json.dumps(report, indent=1)
    assert whole[0]["name"] == f"whole model vs {runtime} running the source (seed 0, 2 samples)"  # shared by every target


def test_without_recorded_outputs_a_convolving_source_is_not_run_by_keras(run_cli, tmp_path):
    """Keras 3 would run a Theano-backend file's kernels as correlation kernels: no reference, said why."""
    good = convert(run_cli, tmp_path, "keras_theano", "k2_conv2d_single", ".h5")
    code, report = validate(run_cli, "keras_theano", "k2_conv2d_single", good, recorded=False)
    whole = [c for c in report["checks"] if c["check"] == "whole-model"]
    assert whole[0]["status"] == "skip" and "Theano-era" in whole[0]["reason"]  # the shared reference's reason
    assert code == 0 and report["status"] == "pass"  # every weighted layer checked alone


# ------------------------------------------------------------------------------------------- Keras tampers


KERAS_TAMPERS = {
    "flip": ("cnn_flatten_dense", "conv_a", "Conv2D", lambda k: k[::-1, ::-1], (0,), "180-degree flip"),
    "swap H/W": ("functional_residual", "stem", "Conv2D", lambda k: k.swapaxes(0, 1), (0,), "H/W transposed"),
    "dense rows": ("cnn_flatten_dense", "dense", "Dense",  # rows H,W,C (2, 2, 5) left in C,H,W order
                   lambda k: k.reshape(2, 2, 5, 6).transpose(2, 0, 1, 3).reshape(20, 6), (0,), "Dense rows"),
    "GRU gates": ("conv1d_rnn", "gru", "GRU", lambda k: swap_blocks(k, -1, 3, 0, 1), (0, 1, 2), "gate blocks z and r"),
    "LSTM gates": ("conv1d_rnn", "lstm", "LSTM", lambda k: swap_blocks(k, -1, 4, 1, 2), (0, 1, 2),
                   "gate blocks f and c"),
}


@pytest.mark.parametrize("suffix", KERAS)
@pytest.mark.parametrize("tamper", list(KERAS_TAMPERS))
def test_a_tampered_keras_file_fails_naming_the_layer(run_cli, tmp_path, suffix, tamper):
    name, layer, keras_class, change, indices, cause = KERAS_TAMPERS[tamper]
    good = convert(run_cli, tmp_path, "keras3", name, suffix)
    bad = tamper_keras(good, tmp_path / f"bad{suffix}", layer, change, indices)
    assert_fails_naming(*validate(run_cli, "keras3", name, bad), layer, keras_class, cause)


@pytest.mark.parametrize("suffix", KERAS)
def test_a_tampered_keras_file_fails_without_recorded_outputs_too(run_cli, tmp_path, suffix):
    good = convert(run_cli, tmp_path, "keras3", "cnn_flatten_dense", suffix)
    bad = tamper_keras(good, tmp_path / f"bad{suffix}", "conv_same_s2", lambda k: k[::-1, ::-1])
    code, report = validate(run_cli, "keras3", "cnn_flatten_dense", bad, recorded=False)
    assert code == 1 and "180-degree flip" in failed_layer(report, "conv_same_s2")["likely_cause"]
    assert any(c["check"] == "whole-model" and c["status"] == "fail" for c in report["checks"])


def test_a_weights_h5_group_keras_would_not_find_fails_naming_the_layer(run_cli, tmp_path):
    """Keras 3 finds a layer's variables by its class key and number, not by the name attribute."""
    good = convert(run_cli, tmp_path, "keras3", "cnn_flatten_dense", ".weights.h5")
    bad = tmp_path / "bad.weights.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "r+") as handle:
        handle.move("layers/conv2d_1", "layers/conv2d_7")
    code, report = validate(run_cli, "keras3", "cnn_flatten_dense", bad)
    names = report["checks"][0]
    assert code == 1 and names["status"] == "fail" and "conv_same_s2" in names["reason"], names
    assert "layers/conv2d_1/vars" in names["reason"]


def test_a_legacy_h5_whose_groups_keras_would_load_in_another_order_fails(run_cli, tmp_path):
    """Keras's load_weights matches legacy groups to layers by order, whatever their names say."""
    good = convert(run_cli, tmp_path, "keras3", "conv1d_rnn", ".h5")
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "r+") as handle:
        names = [n.decode() for n in handle.attrs["layer_names"]]
        a, b = names.index("conv1d"), names.index("out")
        names[a], names[b] = names[b], names[a]
        handle.attrs["layer_names"] = np.array([n.encode() for n in names])
    code, report = validate(run_cli, "keras3", "conv1d_rnn", bad)
    assert code == 1 and report["checks"][0]["status"] == "fail"
    assert "conv1d" in report["checks"][0]["reason"] and "out" in report["checks"][0]["reason"]


def test_a_layout_bug_shared_by_the_keras_writer_and_reader_cannot_cancel_out(run_cli, tmp_path, monkeypatch):
    """With H and W swapped in the one Keras conv2d pattern, weightport's reader reads its own wrong file
    back as right; the validator reads the file as Keras does and fails it."""
    from weightport import load
    from weightport.formats.keras.patterns import KERAS_PATTERNS
    monkeypatch.setitem(KERAS_PATTERNS, "conv2d", "w h i o")
    bad = convert(run_cli, tmp_path, "onnx", "torch_cnn", ".weights.h5")
    source, reread = load(source_path("onnx", "torch_cnn")), load(str(bad))
    assert np.array_equal(source.layer("4").tensors["weight"].load(), reread.layer("4").tensors["weight"].load())
    code, report = validate(run_cli, "onnx", "torch_cnn", bad)
    assert code == 1
    assert report["checks"][0]["status"] == "fail" and "0:" in report["checks"][0]["reason"]  # (2, 3) vs (3, 2)
    assert "kernel rows and columns swapped" in failed_layer(report, "4")["likely_cause"]  # square: values wrong


# -------------------------------------------------------------------------------------------- ONNX tampers


def flat_rows(w):  # Gemm weight (6, 20), columns C,H,W (5, 2, 2), put in H,W,C order
    return w.reshape(6, 5, 2, 2).transpose(0, 2, 3, 1).reshape(6, 20)


ONNX_TAMPERS = {
    "flip": ("cnn_flatten_dense", "conv_a", "Conv", "Conv2D", lambda w: w[:, :, ::-1, ::-1], (1,), "180-degree flip"),
    "swap H/W": ("functional_residual", "stem", "Conv", "Conv2D", lambda w: w.swapaxes(2, 3), (1,), "H/W transposed"),
    "dense rows": ("cnn_flatten_dense", "dense", "Gemm", "Dense", flat_rows, (1,), "Dense rows"),
    "GRU gates": ("conv1d_rnn", "gru", "GRU", "GRU", lambda w: swap_blocks(w, 1, 3, 0, 1), (1, 2), "gate blocks z and r"),
    "LSTM gates": ("conv1d_rnn", "lstm", "LSTM", "LSTM", lambda w: swap_blocks(w, 1, 4, 2, 3), (1, 2),
                   "gate blocks f and c"),
}


@pytest.mark.parametrize("tamper", list(ONNX_TAMPERS))
def test_a_tampered_onnx_graph_fails_naming_the_layer(run_cli, tmp_path, tamper):
    name, layer, op, keras_class, change, positions, cause = ONNX_TAMPERS[tamper]
    good = convert(run_cli, tmp_path, "keras3", name, ".onnx")
    bad = tamper_onnx(good, tmp_path / "bad.onnx", layer, op, change, positions)
    if op in ("GRU", "LSTM"):  # the bias B = [Wb, Rb] too, block by block in both halves
        count = 3 if op == "GRU" else 4
        first, second = (0, 1) if op == "GRU" else (2, 3)
        tamper_onnx(bad, bad, layer, op, lambda b: np.concatenate(
            [swap_blocks(h, 1, count, first, second) for h in np.split(b, 2, axis=1)], axis=1), (3,))
    assert_fails_naming(*validate(run_cli, "keras3", name, bad), layer, keras_class, cause)


def test_an_onnx_template_filled_in_is_checked_through_its_constant_nodes(run_cli, tmp_path):
    """helper_autopad_gemm as its own template: a Conv weight from a Constant node, one through an Identity,
    Gemm with transB=0, alpha and beta, MatMul + Add.  A flipped kernel behind the Identity fails its layer."""
    template = source_path("onnx", "helper_autopad_gemm")
    good = convert(run_cli, tmp_path, "onnx", "helper_autopad_gemm", ".onnx", "--template", template)
    code, report = validate(run_cli, "onnx", "helper_autopad_gemm", good)
    assert code == 0 and sum(c["check"] == "layer" and c["status"] == "pass" for c in report["checks"]) == 4
    model = onnx.load(str(good))
    tensor = next(t for t in model.graph.initializer if t.name == "w_lower_init")
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(onnx.numpy_helper.to_array(tensor)[:, :, ::-1, ::-1]),
                                                 tensor.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    code, report = validate(run_cli, "onnx", "helper_autopad_gemm", tmp_path / "bad.onnx")
    assert code == 1 and "180-degree flip" in failed_layer(report, "conv_lower")["likely_cause"]


def test_a_wrong_onnx_node_attribute_fails_its_layer_and_the_whole_graph(run_cli, tmp_path):
    """Each node is cut out with its own strides, dilations and groups (padding made valid), so a wrong
    dilation fails the layer as well as the whole graph."""
    good = convert(run_cli, tmp_path, "onnx", "torch_cnn", ".onnx")
    model = onnx.load(str(good))
    conv = next(n for n in model.graph.node if n.name == "/4/Conv")
    dilations = next(a for a in conv.attribute if a.name == "dilations")
    dilations.ints[:] = [1, 1]
    onnx.save(model, str(tmp_path / "bad.onnx"))
    code, report = validate(run_cli, "onnx", "torch_cnn", tmp_path / "bad.onnx")
    assert code == 1 and failed_layer(report, "4")["name"] == "layer 4 (Conv)"
    assert any(c["check"] == "whole-model" and c["status"] == "fail" for c in report["checks"])


def test_an_onnx_graph_missing_a_layers_weights_fails_naming_it(run_cli, tmp_path):
    good = convert(run_cli, tmp_path, "keras3", "cnn_flatten_dense", ".onnx")
    model = onnx.load(str(good))
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.input[0] = bn.input[0]
    model.graph.node.remove(bn)
    kept = {name for node in model.graph.node for name in node.input}
    for tensor in [t for t in model.graph.initializer if t.name not in kept]:
        model.graph.initializer.remove(tensor)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    code, report = validate(run_cli, "keras3", "cnn_flatten_dense", tmp_path / "bad.onnx")
    assert code == 1 and report["checks"][0]["status"] == "fail" and "bn:" in report["checks"][0]["reason"]


def test_the_validators_never_read_the_converted_file_with_weightports_readers(run_cli, tmp_path, monkeypatch):
    from weightport.formats.keras import h5_reader, keras3_reader
    from weightport.formats.onnx import reader as onnx_reader
    opened = []
    for module in (h5_reader, keras3_reader, onnx_reader):
        original = module.read
        monkeypatch.setattr(module, "read", lambda path, *a, original=original, **k: (opened.append(str(path)),
                                                                                     original(path, *a, **k))[1])
    for suffix in KERAS + [".onnx"]:
        converted = convert(run_cli, tmp_path, "keras3", "conv1d_rnn", suffix)
        opened.clear()
        code, _ = validate(run_cli, "keras3", "conv1d_rnn", converted)
        assert code == 0 and opened and str(converted) not in opened, opened


def test_validating_an_onnx_output_of_an_onnx_source_imports_no_tensorflow(tmp_path):
    """Source and target both run by onnxruntime: Keras and TensorFlow stay out of the process."""
    import subprocess
    import sys
    source, out = fixture_path("onnx", "torch_cnn.onnx"), str(tmp_path / "cnn.onnx")
    commands = [["convert", source, "-o", out, "--quiet"], ["validate", source, out]]
    program = "\n".join(["import sys", "from weightport.cli import main",
                          f"codes = [main(args) for args in {commands!r}]",
                          "frameworks = sorted({'tensorflow', 'keras'} & set(sys.modules))",
                          "sys.exit(f'{codes} {frameworks}' if codes != [0, 0] or frameworks else 0)"])
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# -------------------------------------------------------------------------------------------- incomplete


def test_a_keras_file_for_a_convolving_runtime_leaves_its_kernels_unchecked(run_cli, tmp_path):
    """Written with --target-semantics convolution (backend 'theano'): Keras 3 cannot run its kernels."""
    out = convert(run_cli, tmp_path, "keras3", "cnn_flatten_dense", ".h5", "--target-semantics", "convolution")
    code, report = validate(run_cli, "keras3", "cnn_flatten_dense", out)
    assert code == 3 and report["status"] == "incomplete", json.dumps(report, indent=1)
    unchecked = {gap["layer"]: gap["reason"] for gap in report["unchecked_layers"]}
    assert sorted(unchecked) == ["conv_a", "conv_same_s2"] and all("Theano" in r for r in unchecked.values())
    assert any(c["layer"] == "dense" and c["status"] == "pass" for c in report["checks"])


@pytest.mark.parametrize("suffix", KERAS)
def test_a_layer_no_oracle_runs_leaves_a_keras_port_of_an_onnx_graph_incomplete(run_cli, tmp_path, suffix):
    """Keras cannot rebuild an ONNX graph, so each layer stands alone: while no layer oracle computes an ONNX
    GRU with linear_before_reset=0, that layer is unchecked (exit 3, with the reason); never a pass."""
    code, report = validate(run_cli, "onnx", "gru_reset_before",
                            convert(run_cli, tmp_path, "onnx", "gru_reset_before", suffix))
    layer = next(c for c in report["checks"] if c.get("layer") == "gru_reset_before")
    if layer["status"] == "pass":  # an oracle computes it now: Keras ran the file's GRU (reset_after=False)
        assert code == 0 and report["status"] == "pass"
        return
    assert code == 3 and report["status"] == "incomplete" and layer["status"] == "skip"
    gap = report["unchecked_layers"][0]
    assert gap["layer"] == "gru_reset_before" and layer["reason"] in gap["reason"]
    assert "Keras cannot rebuild" in gap["reason"]
