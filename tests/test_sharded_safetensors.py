"""Sharded safetensors both ways (Hugging Face's layout: NAME-0000k-of-0000N.safetensors + NAME.safetensors.index.json).

Truth: huggingface_hub writes a sharded checkpoint (save_torch_state_dict) that weightport must read bit-exactly,
and loads weightport's shards into a torch module (load_torch_model); the safetensors package reads each shard;
the converted Keras model reproduces the output Keras recorded.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import fixture_path, require
from weightport.api import load
from weightport.core.atomic import check_free_space
from weightport.core.errors import OutputError

H5 = fixture_path("keras3", "cnn_flatten_dense")


def shards_in(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))


def test_sharded_output_loads_with_huggingface_hub_and_reproduces_keras(run_cli, tmp_path):
    torch = require("torch")
    hub = require("huggingface_hub")
    from safetensors.torch import load_file
    from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
    single = tmp_path / "one.safetensors"
    assert run_cli("convert", H5 + ".h5", "-o", single)[0] == 0
    code, _, err = run_cli("convert", H5 + ".h5", "-o", tmp_path / "model.safetensors.index.json",
                           "--max-shard-size", "300B")
    assert code == 0, err
    shards = [name for name in shards_in(tmp_path) if name.startswith("model-")]
    assert len(shards) == 6 and shards[0] == "model-00001-of-00006.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    whole = load_file(str(single))
    assert set(index["weight_map"]) == set(whole)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in whole.values())
    merged = {}
    for name in shards:
        part = load_file(str(tmp_path / name))  # every shard is a complete safetensors file
        assert all(index["weight_map"][key] == name for key in part)
        merged.update(part)
    assert merged.keys() == whole.keys() and all(torch.equal(merged[k], whole[k]) for k in whole)
    model = load(H5 + ".h5")
    module = CanonicalModule(model).eval()
    hub.load_torch_model(module, str(tmp_path), strict=True, filename_pattern="model{suffix}.safetensors")
    x = np.load(H5 + ".input.npy")
    with torch.no_grad():
        got = from_canonical_output(module(torch.from_numpy(to_canonical_input(x, model))).numpy(), model)
    np.testing.assert_allclose(got, np.load(H5 + ".output.npy"), rtol=1e-5, atol=1e-5)


def test_huggingface_sharded_checkpoint_reads_bit_exactly(run_cli, tmp_path):
    """A checkpoint huggingface_hub sharded (float32, float16, bfloat16, int64) converts to one file and to
    .pt with every key and bit kept."""
    torch = require("torch")
    hub = require("huggingface_hub")
    from safetensors.torch import load_file
    generator = torch.Generator().manual_seed(7)
    state = {"embed.weight": torch.randn(37, 11, generator=generator),
             "blocks.0.proj.weight": torch.randn(13, 11, generator=generator).half(),
             "blocks.0.proj.bias": torch.randn(13, generator=generator).to(torch.bfloat16),
             "blocks.1.scale": torch.randn(5, 3, 2, generator=generator),
             "position_ids": torch.arange(9).reshape(1, 9),
             "cls_token": torch.randn(1, 1, 11, generator=generator)}
    source = tmp_path / "hf"
    source.mkdir()
    hub.save_torch_state_dict(state, source, max_shard_size=1000)
    assert len(shards_in(source)) >= 2
    out = tmp_path / "merged.safetensors"
    code, _, err = run_cli("convert", source / "model.safetensors.index.json", "-o", out)
    assert code == 0, err
    back = load_file(str(out))
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    code, out_text, _ = run_cli("inspect", source / "model.safetensors.index.json")
    assert code == 0 and "cls_token" in out_text and "blocks.0.proj" in out_text


@pytest.mark.parametrize("damage", ["outside", "missing", "wrong_shard", "no_map"])
def test_damaged_index_is_refused_in_one_line(run_cli, tmp_path, damage):
    require("torch")
    hub = require("huggingface_hub")
    import torch
    hub.save_torch_state_dict({"a.weight": torch.ones(300), "b.weight": torch.zeros(300)}, tmp_path, max_shard_size=1500)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    if damage == "outside":
        index["weight_map"]["a.weight"] = "../model-00001-of-00002.safetensors"
    elif damage == "missing":
        os.unlink(tmp_path / index["weight_map"]["b.weight"])
    elif damage == "wrong_shard":
        index["weight_map"]["b.weight"] = index["weight_map"]["a.weight"]
    else:
        index = {"metadata": {}}
    index_path.write_text(json.dumps(index))
    before = sorted(os.listdir(tmp_path))
    code, _, err = run_cli("convert", index_path, "-o", tmp_path / "out.safetensors")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "model.safetensors.index.json" in lines[0], err
    assert sorted(os.listdir(tmp_path)) == before


def test_one_file_output_that_needs_shards_is_refused_before_writing(run_cli, tmp_path):
    code, _, err = run_cli("convert", H5 + ".h5", "-o", tmp_path / "m.safetensors", "--max-shard-size", "300B")
    assert code == 2 and "m.safetensors.index.json" in err
    assert os.listdir(tmp_path) == []
    code, _, err = run_cli("convert", H5 + ".h5", "-o", tmp_path / "m.safetensors", "--max-shard-size", "lots")
    assert code == 2 and "5GB" in err
    code, _, err = run_cli("convert", H5 + ".h5", "-o", tmp_path / "m.npz", "--max-shard-size", "1MB")
    assert code == 2 and "--max-shard-size" in err and os.listdir(tmp_path) == []


def test_an_output_larger_than_the_free_space_is_refused_with_the_figures(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(OutputError) as refused:
        check_free_space(str(tmp_path / "big.safetensors"), free * 4 + 10**12)
    assert "free" in str(refused.value) and "needs" in str(refused.value)
    check_free_space(str(tmp_path / "small.safetensors"), 1)


ARCH_MODULE = '''
import torch


class Chain(torch.nn.Module):
    """Two Linear layers (not square), as a Hugging Face checkpoint names them."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(24, 40)
        self.down = torch.nn.Linear(40, 16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))
'''


def test_sharded_state_dict_with_arch_to_keras_weights_reproduces_torch(run_cli, tmp_path):
    """--arch without --input-shape builds the module on torch's meta device (a model of tens of GB costs
    no memory there); the Keras model holding the written .weights.h5 reproduces the torch module."""
    torch = require("torch")
    keras = require("keras")
    hub = require("huggingface_hub")
    (tmp_path / "chain.py").write_text(ARCH_MODULE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("chain_arch", tmp_path / "chain.py")
    chain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chain)
    torch.manual_seed(11)
    module = chain.Chain().eval()
    (tmp_path / "hf").mkdir()
    hub.save_torch_state_dict(module.state_dict(), str(tmp_path / "hf"), max_shard_size=3000)
    assert len(shards_in(tmp_path / "hf")) > 1
    out = tmp_path / "chain.weights.h5"
    code, _, err = run_cli("convert", tmp_path / "hf" / "model.safetensors.index.json", "-o", out, "--to", "keras",
                           "--arch", f"{tmp_path / 'chain.py'}:Chain", "--quiet")
    assert code == 0, err
    inputs = keras.Input((24,))
    outputs = keras.layers.Dense(16)(keras.layers.Dense(40, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.load_weights(str(out))
    x = np.random.default_rng(2).standard_normal((3, 24)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-5)
