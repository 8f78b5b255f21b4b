"""Hostile corpus, round 2 (issue 20): hangs, memory bombs and broken files that are small.

Every file is regenerated here by code (h5py, onnx.helper, json, zipfile); nothing large is vendored.
Each one is either refused as docs/security.md promises (:func:`tests.security.hostile.assert_refused`:
exit 2, one line naming the file, nothing written, peak RSS and time bounded) or, when it is a valid
file, converted correctly within the time bound.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import fixture_path
from tests.security.hostile import TIME_BOUND, assert_refused, run_weightport

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")
KERAS = fixture_path("keras3", "cnn_flatten_dense.keras")
DEEP = 100_000       # far beyond any parser's recursion limit
RECURSIVE = 950      # parses with json's default limit, then recursed into by Python code


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_dict(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# -- builders --------------------------------------------------------------------------------------------------

def keras_h5(path: Path, config: dict | str | None, weights: dict[str, dict[str, h5py.Dataset | np.ndarray]],
             names: list[str] | None = None, **dataset_options) -> Path:
    """A legacy Keras HDF5 file: ``model_config`` (JSON) and one group per layer in ``layer_names``."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f.attrs["backend"] = "tensorflow"
        if config is not None:
            f.attrs["model_config"] = config if isinstance(config, str) else json.dumps(config)
        root = f.create_group("model_weights")
        names = names if names is not None else list(weights)
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            group = root.create_group(name)
            variables = weights.get(name, {})
            group.attrs["weight_names"] = np.array([f"{name}/{v}:0".encode() for v in variables], dtype="S")
            for variable, value in variables.items():
                if isinstance(value, np.ndarray):
                    group.create_dataset(f"{name}/{variable}:0", data=value)
                else:
                    group.create_dataset(f"{name}/{variable}:0", **value, **dataset_options)
    return path


def layer(class_name: str, name: str, inbound: list[str], **config) -> dict:
    return {"class_name": class_name, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else []}


def dense_weights(rows: int = 4, units: int = 3) -> dict[str, np.ndarray]:
    return {"kernel": np.arange(rows * units, dtype=np.float32).reshape(rows, units),
            "bias": np.zeros(units, np.float32)}


def safetensors_file(path: Path, header: dict | str, data: bytes) -> Path:
    raw = (header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def many_keys(path: Path, count: int) -> Path:
    """A valid safetensors file of ``count`` tiny tensors ``layer<k>.weight`` (2 float32 each)."""
    header = {f"layer{k}.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8 * k, 8 * k + 8]}
              for k in range(count)}
    return safetensors_file(path, header, np.arange(2 * count, dtype="<f4").tobytes())


def keras_archive(path: Path, replace: dict[str, bytes]) -> Path:
    """The fixture ``.keras`` archive with some members replaced (stored, as Keras writes them)."""
    with zipfile.ZipFile(KERAS) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            target.writestr(info.filename, replace.get(info.filename, source.read(info.filename)))
    return path


def onnx_model(path: Path, nodes: list, initializers: list = (), outputs: list[str] = ("y",),
               inputs: list = None) -> Path:
    import onnx
    from onnx import TensorProto, helper
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    graph = helper.make_graph(nodes, "hostile", inputs,
                              [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    assert path.stat().st_size < 4096, path.stat().st_size  # a small file, however big its declarations
    return path


def matmul_model(path: Path, weight) -> Path:
    from onnx import helper
    return onnx_model(path, [helper.make_node("MatMul", ["x", "W"], ["y"], name="dense")], [weight])


# -- hangs -------------------------------------------------------------------------------------------------------

def test_keras_inbound_cycle_is_refused(tmp_path):
    """Two Dropout layers feeding each other before a Dense: following inputs back never ended."""
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        layer("InputLayer", "input", [], batch_input_shape=[None, 4]),
        layer("Dropout", "d1", ["d2"], rate=0.5),
        layer("Dropout", "d2", ["d1"], rate=0.5),
        layer("Dense", "dense", ["d1"], units=3)]}}
    source = keras_h5(tmp_path / "cycle.h5", config, {"dense": dense_weights()},
                      names=["input", "d1", "d2", "dense"])
    assert_refused(source, tmp_path, must_mention="cycle")
    assert_refused(source, tmp_path, command="inspect", must_mention="cycle")


def test_keras_self_loop_is_refused(tmp_path):
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        layer("InputLayer", "input", [], batch_input_shape=[None, 4]),
        layer("Flatten", "flat", ["flat"]),
        layer("Dense", "dense", ["flat"], units=3)]}}
    source = keras_h5(tmp_path / "loop.h5", config, {"dense": dense_weights()}, names=["input", "flat", "dense"])
    assert_refused(source, tmp_path, must_mention="cycle")


def hard_link_dag(group: h5py.Group, depth: int) -> None:
    """``depth`` levels of groups, each reached twice from the one above (2**depth paths, ``depth`` groups)."""
    current = group
    for level in range(depth):
        child = group.file.create_group(f"tmp_{level}")
        current["a"] = child
        current["b"] = child
        del group.file[f"tmp_{level}"]
        current = child


def test_hdf5_hard_link_dag_is_read_in_linear_time(tmp_path):
    """A 41-level hard-link DAG beside real Keras weights: 2**41 paths, 41 groups. The file is valid HDF5
    and converts as the file without it does."""
    source = tmp_path / "dag.h5"
    shutil.copy(H5, source)
    with h5py.File(source, "a") as f:
        hard_link_dag(f.create_group("dag"), 41)
        hard_link_dag(f["model_weights/pool"], 41)
    assert source.stat().st_size < 200_000
    clean = run_weightport("convert", H5, "-o", tmp_path / "clean.safetensors")
    assert clean.code == 0, clean.stderr
    outcome = run_weightport("convert", source, "-o", tmp_path / "dag.safetensors")
    assert outcome.code == 0, outcome.stderr
    assert outcome.seconds < TIME_BOUND / 3, f"{outcome.seconds:.1f} s"
    expected, written = load_file(str(tmp_path / "clean.safetensors")), load_file(str(tmp_path / "dag.safetensors"))
    assert sorted(written) == sorted(expected)
    assert all(np.array_equal(written[key], expected[key]) for key in expected)
    print(f"hard-link DAG depth 41: {outcome.seconds:.2f} s, peak RSS {outcome.peak_rss / 2**20:.0f} MiB")


def test_hdf5_hard_link_cycle_is_read(tmp_path):
    """A group holding a hard link to its own parent: valid HDF5, walked once."""
    source = tmp_path / "loop.h5"
    shutil.copy(H5, source)
    with h5py.File(source, "a") as f:
        f["model_weights/pool/up"] = f["model_weights"]
    outcome = run_weightport("convert", source, "-o", tmp_path / "loop.safetensors")
    assert outcome.code == 0, outcome.stderr


def test_keras3_layers_dag_is_read_in_linear_time(tmp_path):
    """Keras 3 weights whose nested ``layers`` groups form a 41-level hard-link DAG."""
    source = tmp_path / "dag.weights.h5"
    shutil.copy(fixture_path("keras3", "cnn_flatten_dense.weights.h5"), source)
    with h5py.File(source, "a") as f:
        current = f["layers"].create_group("extra")
        for level in range(41):
            layers = current.create_group("layers")
            child = f.create_group(f"tmp_{level}")
            layers["a"] = child
            layers["b"] = child
            del f[f"tmp_{level}"]
            current = child
    outcome = run_weightport("inspect", source)
    assert outcome.code in (0, 2), outcome.stderr      # the extra groups hold no layer: refusing them is fine
    assert len(outcome.stderr.strip().splitlines()) == (outcome.code == 2), outcome.stderr
    assert "internal error" not in outcome.stderr and "Traceback" not in outcome.stderr
    assert outcome.seconds < TIME_BOUND / 3, f"{outcome.seconds:.1f} s"


def timed_conversion(tmp_path: Path, count: int) -> float:
    source = many_keys(tmp_path / f"keys{count}.safetensors", count)
    target = tmp_path / f"keys{count}.out.safetensors"
    outcome = run_weightport("convert", source, "-o", target, "--quiet")
    assert outcome.code == 0, outcome.stderr[-2000:]
    written = load_file(str(target))
    assert len(written) == count
    for k in (0, count // 2, count - 1):
        assert written[f"layer{k}.weight"].tolist() == [2.0 * k, 2.0 * k + 1]
    print(f"safetensors with {count} keys: {outcome.seconds:.2f} s, peak RSS {outcome.peak_rss / 2**20:.0f} MiB")
    return outcome.seconds


def test_safetensors_with_many_keys_converts_in_linear_time(tmp_path):
    """40k keys took 30 s and 1.2M keys hours (a linear search per key); now a few seconds, and 4x the
    keys take about 4x the time, not 16x."""
    small = timed_conversion(tmp_path, 40_000)
    assert small < 20, f"40k keys: {small:.1f} s"
    large = timed_conversion(tmp_path, 160_000)
    assert large < 8 * small, f"160k keys {large:.1f} s vs 40k keys {small:.1f} s"


def test_safetensors_with_many_keys_inspects(tmp_path):
    source = many_keys(tmp_path / "keys.safetensors", 40_000)
    outcome = run_weightport("inspect", source)
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert outcome.seconds < 20, f"{outcome.seconds:.1f} s"


# -- memory bombs ------------------------------------------------------------------------------------------------

def folding_bomb(kind: str):
    """Tiny constants whose folded result is gigabytes (the reader folds shape arithmetic itself)."""
    from onnx import TensorProto, helper

    def constant(name, values, dtype=TensorProto.INT64, dims=None):
        values = list(values)
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_value", dtype, dims if dims is not None else [len(values)], values))

    if kind == "Expand":       # one float broadcast to 2**30 values: 4 GiB
        return [constant("one", [1.0], TensorProto.FLOAT), constant("shape", [1 << 15, 1 << 15]),
                helper.make_node("Expand", ["one", "shape"], ["y"])]
    if kind == "Range":        # 0 .. 2**30 as int64: 8 GiB
        return [constant("start", [0], dims=[]), constant("limit", [1 << 30], dims=[]),
                constant("delta", [1], dims=[]), helper.make_node("Range", ["start", "limit", "delta"], ["y"])]
    if kind == "Mul":          # (2**15, 1) * (1, 2**15) from ConstantOfShape: 4 GiB
        return [constant("rows", [1 << 15, 1]), constant("cols", [1, 1 << 15]),
                helper.make_node("ConstantOfShape", ["rows"], ["a"],
                                 value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
                helper.make_node("ConstantOfShape", ["cols"], ["b"],
                                 value=helper.make_tensor("w", TensorProto.FLOAT, [1], [3.0])),
                helper.make_node("Mul", ["a", "b"], ["y"])]
    if kind == "many":         # many nodes, each 48 MiB (under the per-node bound), 1.5 GiB in all
        nodes = [constant("one", [1.0], TensorProto.FLOAT), constant("shape", [12 << 20])]
        return nodes + [helper.make_node("Expand", ["one", "shape"], [f"c{k}"]) for k in range(32)]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["Expand", "Range", "Mul", "many"])
def test_onnx_constant_folding_bomb_is_refused(tmp_path, kind):
    nodes = folding_bomb(kind)
    outputs = [f"c{k}" for k in range(32)] if kind == "many" else ["y"]
    source = onnx_model(tmp_path / f"fold_{kind.lower()}.onnx", nodes, outputs=outputs)
    outcome = assert_refused(source, tmp_path, must_mention="compute")
    print(f"ONNX {kind} folding bomb ({source.stat().st_size} bytes): refused in {outcome.seconds:.2f} s, "
          f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB")


@pytest.mark.parametrize("layout", ["contiguous", "chunked"])
def test_hdf5_fill_value_dataset_is_refused(tmp_path, layout):
    """A 4 GiB kernel that was never written: HDF5 would hand back its fill value, 4 GiB of it."""
    options = {"chunks": (1 << 12, 1 << 12)} if layout == "chunked" else {}
    kernel = {"shape": (1 << 16, 1 << 14), "dtype": "<f4", "fillvalue": 1.5, **options}
    source = keras_h5(tmp_path / f"fill_{layout}.h5", None,
                      {"dense": {"kernel": kernel, "bias": np.zeros(1 << 14, np.float32)}})
    assert source.stat().st_size < 200_000
    for command in ("convert", "inspect"):
        outcome = assert_refused(source, tmp_path, command=command, must_mention="declares")
    print(f"HDF5 {layout} fill value ({source.stat().st_size} bytes, 4 GiB declared): refused, "
          f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB")


def deflated_zeros(nbytes: int) -> bytes:
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(nbytes >> 20)]
    return b"".join(parts) + compressor.flush()


def test_hdf5_gzip_bomb_is_refused(tmp_path):
    """3 GiB of zeros in gzip chunks (about 3 MB on disk): more than the 1000:1 a weight ever compresses."""
    chunk = 1 << 26                                      # float32 values per chunk: 256 MiB
    payload = deflated_zeros(chunk * 4)
    source = tmp_path / "gzip.h5"
    with h5py.File(source, "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f.attrs["backend"] = "tensorflow"
        root = f.create_group("model_weights")
        root.attrs["layer_names"] = np.array([b"embedding"])
        group = root.create_group("embedding")
        group.attrs["weight_names"] = np.array([b"embedding/embeddings:0"])
        dataset = group.create_dataset("embedding/embeddings:0", shape=(12 * chunk // 64, 64), dtype="<f4",
                                       chunks=(chunk // 64, 64), compression="gzip")
        for k in range(12):
            dataset.id.write_direct_chunk((k * chunk // 64, 0), payload)
    assert source.stat().st_size < 5_000_000
    outcome = assert_refused(source, tmp_path, must_mention="compressed")
    print(f"HDF5 gzip bomb ({source.stat().st_size} bytes, 3 GiB declared): refused, "
          f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB")


def test_hdf5_gzip_with_unwritten_chunks_is_refused(tmp_path):
    """A gzip dataset declaring 4 GiB with a single small chunk written: 10 KB declaring gigabytes."""
    kernel = {"shape": (1 << 16, 1 << 14), "dtype": "<f4", "chunks": (64, 64), "compression": "gzip"}
    source = keras_h5(tmp_path / "sparse.h5", None, {"dense": {"kernel": kernel,
                                                               "bias": np.zeros(1 << 14, np.float32)}})
    with h5py.File(source, "a") as f:
        f["model_weights/dense/dense/kernel:0"][:64, :64] = 1.0
    assert source.stat().st_size < 100_000
    assert_refused(source, tmp_path, must_mention="compressed")


def test_real_gzip_weights_still_convert(tmp_path):
    source = tmp_path / "gzip_ok.h5"
    weights = {"kernel": np.random.RandomState(0).randn(64, 32).astype(np.float32), "bias": np.ones(32, np.float32)}
    keras_h5(source, None, {"dense": {name: {"data": value, "chunks": True, "compression": "gzip"}
                                      for name, value in weights.items()}})
    outcome = run_weightport("convert", source, "-o", tmp_path / "ok.safetensors")
    assert outcome.code == 0, outcome.stderr
    written = load_file(str(tmp_path / "ok.safetensors"))
    assert np.array_equal(written["dense.weight"], weights["kernel"].T)


# -- broken files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\x08\x07", b"\x3a\x00", b"\x12\x00"])
def test_empty_onnx_is_refused(tmp_path, content):
    source = tmp_path / "empty.onnx"
    source.write_bytes(content)
    assert_refused(source, tmp_path)
    assert_refused(source, tmp_path, command="inspect")


@pytest.mark.parametrize("where", ["tensor", "metadata"])
def test_duplicate_safetensors_keys_are_refused(tmp_path, where):
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    header = (f'{{"a":{entry},"a":{entry}}}' if where == "tensor"
              else f'{{"__metadata__":{{"format":"pt","format":"np"}},"a":{entry}}}')
    source = safetensors_file(tmp_path / "dup.safetensors", header, b"\0" * 4)
    assert_refused(source, tmp_path, must_mention="duplicate")


@pytest.mark.parametrize("depth", [RECURSIVE, DEEP])
@pytest.mark.parametrize("shape", ["list", "dict"])
def test_deep_json_in_keras_config_is_refused(tmp_path, depth, shape):
    config = json.loads(zipfile.ZipFile(KERAS).read("config.json"))
    text = json.dumps(config).replace('"kwargs": {}', '"kwargs": {"deep": NEST}', 1)
    assert "NEST" in text
    text = text.replace("NEST", deep_list(depth) if shape == "list" else deep_dict(depth))
    source = keras_archive(tmp_path / "deep.keras", {"config.json": text.encode()})
    assert_refused(source, tmp_path, must_mention="nest")


def test_deep_json_in_legacy_keras_config_is_refused(tmp_path):
    source = keras_h5(tmp_path / "deep.h5", '{"class_name": "Sequential", "config": ' + deep_list(DEEP) + "}",
                      {"dense": dense_weights()})
    assert_refused(source, tmp_path, must_mention="nest")


def test_deep_json_in_safetensors_metadata_is_refused(tmp_path):
    header = '{"__metadata__":{"x":' + deep_list(DEEP) + '},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    source = safetensors_file(tmp_path / "deep.safetensors", header, b"\0" * 4)
    assert_refused(source, tmp_path, must_mention="nest")


@pytest.mark.parametrize("depth", [RECURSIVE, DEEP])
def test_deep_json_in_graph_metadata_is_refused(tmp_path, depth):
    graph = ('{"layers":[{"name":"a","kind":"other","attrs":{"x":' + deep_list(depth) + '},"inputs":[],'
             '"params":{}}]}')
    header = {"__metadata__": {"weightport.graph": graph},
              "a.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    source = safetensors_file(tmp_path / "deep_graph.safetensors", header, b"\0" * 4)
    assert_refused(source, tmp_path, must_mention="nest")
    assert_refused(source, tmp_path, command="inspect", must_mention="nest")


def test_graph_metadata_cycle_is_refused(tmp_path):
    layers = [{"name": "d1", "kind": "dropout", "attrs": {}, "inputs": ["d2"], "params": {}},
              {"name": "d2", "kind": "dropout", "attrs": {}, "inputs": ["d1"], "params": {}},
              {"name": "fc", "kind": "dense", "attrs": {"units": 1}, "inputs": ["d1"],
               "params": {"weight": {"layout": "o i", "semantics": "none"}}}]
    header = {"__metadata__": {"weightport.graph": json.dumps({"layers": layers})},
              "fc.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}
    source = safetensors_file(tmp_path / "cycle.safetensors", header, b"\0" * 4)
    assert_refused(source, tmp_path, must_mention="cycle")


def test_onnx_nul_in_external_location_is_refused(tmp_path):
    from onnx import TensorProto, helper
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], [0.0] * 12)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w\x00.bin"), ("offset", "0"), ("length", "48")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "w").write_bytes(b"\0" * 48)
    source = matmul_model(tmp_path / "nul.onnx", weight)
    assert_refused(source, tmp_path, must_mention="location")


def test_onnx_negative_dims_are_refused(tmp_path):
    from onnx import TensorProto, helper
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.zeros(12, np.float32).tobytes(), raw=True)
    weight.dims[:] = [-4, -3]
    source = matmul_model(tmp_path / "negative.onnx", weight)
    assert_refused(source, tmp_path, must_mention="negative")


@pytest.mark.parametrize("field", ["raw_data", "float_data"])
def test_onnx_data_size_mismatch_is_refused(tmp_path, field):
    from onnx import TensorProto, helper
    if field == "raw_data":
        weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], b"\0" * 48, raw=True)
        weight.raw_data = b"\0" * 5
    else:
        weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], [0.0] * 12)
        del weight.float_data[5:]
    source = matmul_model(tmp_path / "mismatch.onnx", weight)
    assert_refused(source, tmp_path, must_mention="holds")


def test_onnx_huge_declared_weight_is_refused(tmp_path):
    from onnx import TensorProto, helper
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], b"\0" * 48, raw=True)
    weight.dims[:] = [1 << 20, 1 << 20]
    source = matmul_model(tmp_path / "huge.onnx", weight)
    assert_refused(source, tmp_path)


@pytest.mark.parametrize("metadata", [b"[1, 2]", b'"3.1.0"', b"null", b'{"keras_version": [3]}'])
def test_non_dict_keras_metadata_is_refused(tmp_path, metadata):
    source = keras_archive(tmp_path / "meta.keras", {"metadata.json": metadata})
    assert_refused(source, tmp_path, must_mention="metadata.json")



def test_layer_index_follows_the_list():
    """``Model.layer`` is O(1) and stays right however the list changes (append, insert, assignment, rename)."""
    import copy
    import pickle

    from weightport.core.model import Layer, Model, SourceInfo
    model = Model(SourceInfo("m", "test"))
    for k in range(5):
        model.layers.append(Layer(f"l{k}", "other"))
    assert model.layer("l3") is model.layers[3]
    model.layers.insert(0, Layer("first", "input"))
    assert model.layer("first") is model.layers[0] and model.input_names(model.layer("l0")) == ["first"]
    model.layers += [Layer("l0", "dense")]                      # a repeated name finds the first
    assert model.layer("l0").kind == "other"
    model.layer("l1").name = "renamed"
    assert model.find("l1") is None and model.layer("renamed") is model.layers[2]
    model.layers = [layer for layer in model.layers if layer.name != "l2"]
    assert model.find("l2") is None and model.input_names(model.layer("l3")) == ["renamed"]
    del model.layers[0]
    assert model.find("first") is None and model.input_names(model.layer("l0")) == []
    model.layers.pop()
    model.layers[0] = Layer("replaced", "other")
    assert model.find("l0") is None and model.layer("replaced") is model.layers[0]
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
        assert clone.layer("l4") is clone.layers[-1]
    with pytest.raises(KeyError):
        model.layer("missing")
