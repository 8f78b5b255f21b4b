"""benchmarks/large_model.py run at a few MB, so the script that gives docs/performance.md its large-model
table cannot rot: it builds both sources (sharded safetensors with Hugging Face's index, ONNX with external
data), converts each to every target in fresh processes, and reports a row per pair."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from tests.conftest import fixture_path

pytestmark = pytest.mark.requires("onnx", "safetensors")
SCRIPT = os.path.join(os.path.dirname(fixture_path()), "benchmarks", "large_model.py")


def load_script():
    spec = importlib.util.spec_from_file_location("large_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["large_model"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_large_model_benchmark_runs_at_a_tiny_size(tmp_path):
    script = load_script()
    report = tmp_path / "rows.json"
    work = tmp_path / "work"
    rows = script.main(["--size-gb", "0.004", "--workdir", str(work), "--margin-gb", "0", "--json", str(report)])
    ran = {(row["source"], row["target"]) for row in rows if "skipped" not in row}
    assert ran == {(source, target) for source in ("model.safetensors.index.json", "model.onnx")
                   for target in ("safetensors", "onnx", "keras", "raw")}
    for row in rows:
        # every target keeps 16-bit values: about the source's bytes are written (headers and padding aside)
        assert 0.98 < row["written_bytes"] / row["source_bytes"] < 1.1, row
        assert row["seconds"] > 0 and row["copy_seconds"] > 0 and row["peak_rss"] > 0
    saved = json.loads(report.read_text())
    assert saved["tensors"] == len(script.llm_matrices(0.004)) and saved["tensors"] >= 8
    assert sorted(os.listdir(work)) == []  # sources, outputs and copies removed


def test_large_model_benchmark_refuses_what_does_not_fit(tmp_path):
    script = load_script()
    with pytest.raises(SystemExit, match="GB free"):
        script.main(["--size-gb", "1000000", "--workdir", str(tmp_path)])
