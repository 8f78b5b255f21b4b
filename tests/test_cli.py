"""The CLI's contract: exit codes, one-line errors without tracebacks, no partial or overwritten output,
and no heavy framework imported for --help, inspect or an h5 -> safetensors conversion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

from tests.conftest import ROOT, fixture_path

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")


def run_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weightport", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_help_version_and_no_command(run_cli):
    result = run_process("--help")
    assert result.returncode == 0 and "inspect" in result.stdout and "convert" in result.stdout
    result = run_process("--version")
    assert result.returncode == 0 and result.stdout.startswith("weightport ")
    code, out, err = run_cli()
    assert code == 2


def test_every_command_and_option_has_help():
    from weightport.cli import build_parser
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings:
            assert action.help, action.option_strings
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, sub in commands.choices.items():
        assert commands._choices_actions and any(c.dest == name and c.help for c in commands._choices_actions)
        for action in sub._actions:
            assert action.help, (name, action.dest)


def test_no_heavy_imports_for_help_inspect_and_safetensors(tmp_path):
    out = tmp_path / "x.safetensors"
    code = (
        "import sys\n"
        "from weightport.cli import main\n"
        f"assert main(['inspect', {H5!r}]) == 0\n"
        f"assert main(['convert', {H5!r}, '-o', {str(out)!r}]) == 0\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_help_starts_fast():
    start = time.perf_counter()
    result = run_process("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    assert elapsed < 5.0  # generous bound for a loaded CI machine; typical is ~0.2 s


def test_missing_file_is_exit_2_one_line(run_cli, tmp_path):
    code, out, err = run_cli("inspect", tmp_path / "nope.h5")
    assert code == 2
    assert err.count("\n") == 1 and "nope.h5" in err and "Traceback" not in err


def test_random_bytes_file_is_refused_cleanly(tmp_path):
    bad = tmp_path / "random.h5"
    bad.write_bytes(np.random.RandomState(0).bytes(4096))
    result = run_process("convert", str(bad), "-o", str(tmp_path / "out.safetensors"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "random.h5" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["random.h5"]


def test_truncated_h5_is_refused_cleanly(tmp_path):
    data = open(H5, "rb").read()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 3])
    result = run_process("convert", str(bad), "-o", str(tmp_path / "out.safetensors"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "truncated.h5" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.h5"]


def test_existing_output_needs_force(run_cli, tmp_path):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"keep me")
    code, _, err = run_cli("convert", H5, "-o", out)
    assert code == 2 and "--force" in err
    assert out.read_bytes() == b"keep me"
    code, _, err = run_cli("convert", H5, "-o", out, "--force")
    assert code == 0, err
    assert "conv_a.weight" in load_file(str(out))


def test_force_keeps_file_mode(run_cli, tmp_path):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    code, _, err = run_cli("convert", H5, "-o", out, "--force")
    assert code == 0, err
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o640)


def test_bad_target_extension_is_usage_error(run_cli, tmp_path):
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "model.txt")
    assert code == 2 and "--to" in err
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "model.h5", "--to", "torch")
    assert code == 2 and ".safetensors" in err
    assert list(tmp_path.iterdir()) == []


def test_inspect_json_names_rule_and_layouts(run_cli):
    code, out, err = run_cli("inspect", H5, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["source"]["version"].startswith("3.") and report["source"]["backend"] == "tensorflow"
    conv = next(layer for layer in report["layers"] if layer["name"] == "conv_a")
    weight = conv["tensors"]["weight"]
    assert weight["layout"] == "OIHW" and weight["source_layout"] == "h w i o"
    assert weight["rule"] == "keras-tensorflow-correlation" and weight["shape"] == [4, 3, 3, 2]


def test_explain_lists_transforms(run_cli):
    code, out, err = run_cli("explain", H5, "--to", "torch")
    assert code == 0, err
    assert "conv_a.weight: rearrange HWIO -> OIHW" in out
    assert "dense.weight: rearrange (HWC)O -> O(CHW)" in out
    assert "asymmetric padding" in out and "conv_same_s2" in out


def test_rename_maps_layer_names(run_cli, tmp_path):
    mapping = tmp_path / "rename.json"
    mapping.write_text(json.dumps({"conv_a": "features.0", "dense.bias": "classifier.bias"}))
    out = tmp_path / "renamed.safetensors"
    code, _, err = run_cli("convert", H5, "-o", out, "--rename", mapping)
    assert code == 0, err
    keys = set(load_file(str(out)))
    assert {"features.0.weight", "features.0.bias", "classifier.bias", "dense.weight"} <= keys


def test_validate_passes_a_correct_conversion_and_fails_a_missing_flip(run_cli, tmp_path):
    from safetensors.numpy import save_file
    name = "cnn_flatten_dense"
    out = tmp_path / "good.safetensors"
    assert run_cli("convert", H5, "-o", out)[0] == 0
    recorded = (fixture_path("keras3", f"{name}.input.npy"), fixture_path("keras3", f"{name}.output.npy"))
    code, report, err = run_cli("validate", H5, out, "--input", recorded[0], "--expected", recorded[1], "--json")
    assert code == 0, report + err
    assert json.loads(report)["status"] == "pass"
    tensors = load_file(str(out))
    tensors["conv_a.weight"] = tensors["conv_a.weight"][:, :, ::-1, ::-1].copy()  # the mistake: a flip
    bad = tmp_path / "flipped.safetensors"
    save_file(tensors, str(bad))
    code, report, err = run_cli("validate", H5, bad, "--input", recorded[0], "--expected", recorded[1])
    assert code == 1
    assert "FAIL whole model" in report


def test_rename_with_regex_pairs(run_cli, tmp_path):
    mapping = tmp_path / "rename.json"
    mapping.write_text(json.dumps([["^conv_a\\.", "features.0."], ["^dense\\.", "head."]]))
    out = tmp_path / "renamed.safetensors"
    code, _, err = run_cli("convert", H5, "-o", out, "--rename", mapping)
    assert code == 0, err
    keys = set(load_file(str(out)))
    assert {"features.0.weight", "head.weight", "head.bias", "bn.running_var"} <= keys


MODULE = '''
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a = torch.nn.Conv2d(3, 4, (3, 2))
        self.bn = torch.nn.BatchNorm2d(4)
        self.conv_same_s2 = torch.nn.Conv2d(4, 5, (2, 3), stride=2)
        self.dense = torch.nn.Linear(20, {out})
'''


def test_strict_against_a_users_module(run_cli, tmp_path):
    good = tmp_path / "good.py"
    good.write_text(MODULE.format(out=6))
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "a.safetensors", "--strict-against", f"{good}:Net")
    assert code == 0, err
    bad = tmp_path / "bad.py"
    bad.write_text(MODULE.format(out=7))
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "b.safetensors", "--strict-against", f"{bad}:Net")
    assert code == 2 and "dense.weight: (6, 20) vs (7, 20)" in err
    assert not (tmp_path / "b.safetensors").exists()
