"""What a new user meets first (issue 25): convert --help in sections with examples, -o DST described per
target, -o - for stdout, a --rename entry that matches nothing, .keras outputs, padding warnings worded per
target, and errors that name options as the caller wrote them (flags from the CLI, keywords from Python)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, fixture_path

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")
AUTOPAD = fixture_path("onnx", "helper_autopad_gemm.onnx")


def run_process(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """``python -m weightport ARGS`` with stdout as bytes."""
    return subprocess.run([sys.executable, "-m", "weightport", *args], capture_output=True, cwd=cwd, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


# ------------------------------------------------------------------------------------------------ --help

def test_every_convert_option_belongs_to_a_help_group():
    from weightport.cli import build_parser
    from weightport.cli_help import GROUP_TITLES, CONVERT_GROUPS, ungrouped
    convert = build_parser()._subparsers._group_actions[0].choices["convert"]
    missing = ungrouped(convert)
    assert not missing, (f"convert options without a --help group: {', '.join(missing)}; add a row for each to "
                         "CONVERT_GROUPS in converter/cli_help.py")
    assert set(CONVERT_GROUPS.values()) <= set(GROUP_TITLES)


def test_convert_help_is_in_sections_and_ends_with_three_examples_that_parse():
    from weightport.cli import build_parser
    result = run_process("convert", "--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    headings = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")
                and line.endswith(":") or re.match(r"^[a-z/]+: ", line)]
    sections = [h for h in headings if h in ("source", "target", "validation", "raw/java", "messages")]
    assert sections == ["source", "target", "validation", "raw/java", "messages"], headings
    assert "\noptions:" not in text and "\noptional arguments:" not in text  # nothing left ungrouped
    examples = text[text.index("\nexamples:\n"):].splitlines()[1:]
    commands = [line.strip() for line in examples if line.startswith("  weightport convert ")]
    assert len(commands) == 3 and examples[-1].startswith("      ")  # the help ends with the examples
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])


def test_output_is_described_as_file_or_folder_per_target():
    from weightport.cli import build_parser
    convert = build_parser()._subparsers._group_actions[0].choices["convert"]
    help_text = next(a.help for a in convert._actions if a.dest == "output")
    assert "a file for --to torch, keras, onnx, npz, theano" in help_text
    assert "a folder for --to raw, java" in help_text


def test_an_option_of_another_target_is_worded_in_the_singular():
    result = run_process("convert", H5, "-o", "x.pt", "--layout", "HWIO")
    assert result.returncode == 2
    assert b"--layout only applies to the java, raw targets, not torch" in result.stderr


# ------------------------------------------------------------------------------------------------ -o -

@pytest.mark.requires("safetensors")
def test_stdout_holds_exactly_the_file_a_path_would_get(tmp_path):
    from safetensors.numpy import load, load_file
    result = run_process("convert", H5, "-o", "-", "--to", "torch", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    size = len(result.stdout)
    assert size > 1000 and result.stderr.decode().splitlines()[-1] == f"wrote stdout ({size} bytes)"
    assert not any(tmp_path.iterdir())  # nothing written beside
    assert run_process("convert", H5, "-o", str(tmp_path / "m.safetensors")).returncode == 0
    from_stdout, from_file = load(result.stdout), load_file(str(tmp_path / "m.safetensors"))
    assert sorted(from_stdout) == sorted(from_file)
    for key in from_file:
        np.testing.assert_array_equal(from_stdout[key], from_file[key])


@pytest.mark.requires("safetensors")
def test_quiet_prints_nothing_on_success(tmp_path):
    """--quiet: no "wrote ..." line on stdout, nothing on stderr; without it the line names the output."""
    from safetensors.numpy import load_file
    quiet = run_process("convert", H5, "-o", str(tmp_path / "q.safetensors"), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == b"" and quiet.stderr == b"", (quiet.stdout, quiet.stderr)
    assert load_file(str(tmp_path / "q.safetensors"))  # written all the same
    loud = run_process("convert", H5, "-o", str(tmp_path / "l.safetensors"))
    assert loud.returncode == 0 and b"wrote " in loud.stdout + loud.stderr


@pytest.mark.parametrize("args, says", [
    (["--to", "raw"], b"--to raw writes a folder, which stdout cannot hold"),
    (["--to", "java"], b"--to java writes a folder, which stdout cannot hold"),
    (["--to", "npz"], b"--to npz writes 2 files (stdout.npz, stdout.npz.json), and stdout holds one"),
    ([], b"-o - (stdout) needs --to"),
])
def test_stdout_is_refused_where_the_output_is_not_one_file(tmp_path, args, says):
    result = run_process("convert", H5, "-o", "-", *args, cwd=str(tmp_path))
    assert result.returncode == 2 and result.stdout == b""
    lines = result.stderr.splitlines()
    assert says in lines[-1] and all(line.startswith(b"warning: ") for line in lines[:-1]), result.stderr
    assert not any(tmp_path.iterdir()) and not os.path.exists(os.path.join(ROOT, "-"))


# ------------------------------------------------------------------------------------------------ --rename

@pytest.mark.parametrize("mapping, entry", [
    ('{"conv_a": "features.0", "conv_b": "features.3"}', "'conv_b'"),
    ('[["^conv_a", "features.0"], ["^nothing_like_this", "x"]]', "'^nothing_like_this'"),
])
def test_a_rename_entry_matching_nothing_warns_and_strict_refuses(run_cli, tmp_path, mapping, entry):
    rename = tmp_path / "map.json"
    rename.write_text(mapping)
    code, out, err = run_cli("convert", H5, "-o", tmp_path / "m.safetensors", "--rename", rename)
    assert code == 0 and f"warning: rename entry {entry} matches no layer or tensor key" in err, err
    assert "conv_a" not in err.split("matches no")[0].replace(entry, "")  # the matching entry is not named
    code, out, err = run_cli("convert", H5, "-o", tmp_path / "s.safetensors", "--rename", rename, "--strict")
    assert code == 2 and f"rename entry {entry} matches no layer" in err and "drop --strict" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_rename_entries_that_all_match_say_nothing(run_cli, tmp_path):
    rename = tmp_path / "map.json"
    rename.write_text('{"conv_a": "features.0", "dense.weight": "fc.weight", "bn.num_batches_tracked": "n"}')
    code, out, err = run_cli("convert", H5, "-o", tmp_path / "m.safetensors", "--rename", rename, "--strict")
    assert code == 0 and "rename entr" not in err


# ------------------------------------------------------------------------------------------------ .keras

def test_keras_archives_are_not_suggested_and_refused_with_the_reason(run_cli, tmp_path):
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "x.safetensors", "--to", "keras")
    assert code == 2 and "Name the output with one of: .h5, .hdf5, .weights.h5" in err and ".keras" not in err
    for extra in ([], ["--to", "keras"]):
        code, _, err = run_cli("convert", H5, "-o", tmp_path / "x.keras", *extra)
        assert code == 2 and "weightport writes no .keras archive" in err and "NAME.weights.h5" in err
    assert not (tmp_path / "x.keras").exists()


# ------------------------------------------------------------------------------------------------ padding

@pytest.mark.requires("onnx")
def test_padding_warning_is_worded_per_target_and_side(run_cli, tmp_path):
    """helper_autopad_gemm.onnx: conv_upper is SAME_UPPER (more at the end), conv_lower SAME_LOWER (start)."""
    code, _, err = run_cli("convert", AUTOPAD, "-o", tmp_path / "m.safetensors")
    lines = [line for line in err.splitlines() if "asymmetric padding" in line]
    upper = next(line for line in lines if "conv_upper" in line)
    lower = next(line for line in lines if "conv_lower" in line)
    assert "more at the end" in upper and "SAME_UPPER" in upper and "conv_lower" not in upper
    assert "more at the start" in lower and "SAME_LOWER" in lower and "'same'" not in lower
    assert all("F.pad" in line for line in lines)
    code, _, err = run_cli("convert", AUTOPAD, "-o", tmp_path / "m.npz")
    lines = [line for line in err.splitlines() if "asymmetric padding" in line]
    assert len(lines) == 2 and not any("F.pad" in line or "PyTorch" in line for line in lines)
    assert all("JSON sidecar" in line for line in lines)


# ------------------------------------------------------------------------------------------------ error wording

def test_python_errors_name_keywords_and_cli_errors_name_flags(run_cli, tmp_path):
    from weightport import convert, load
    from weightport.core.errors import UsageError
    with pytest.raises(UsageError) as raised:
        load(H5, assume_backend="cntk")
    assert 'assume_backend="theano" or assume_backend="tensorflow"' in str(raised.value)
    with pytest.raises(UsageError) as raised:
        convert(H5, str(tmp_path / "m.pt"), layout="HWIO")
    assert 'convert with to="java"' in str(raised.value) and "--" not in str(raised.value)
    (tmp_path / "m.safetensors").write_bytes(b"")
    with pytest.raises(UsageError) as raised:
        convert(H5, str(tmp_path / "m.safetensors"))
    assert "Pass force=True to overwrite it" in str(raised.value)
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "m.safetensors")
    assert code == 2 and "Pass --force to overwrite it" in err
    code, _, err = run_cli("convert", H5, "-o", tmp_path / "m.pt", "--layout", "HWIO")
    assert code == 2 and "convert with --to java" in err


FLAG = re.compile(r"(?<![\w-])--[a-z]")
CLI_ONLY = {"cli.py", "cli_keras.py"}  # the command line's own usage errors name its flags directly


def error_call_strings(path: Path) -> list[tuple[int, str]]:
    """String constants (f-string parts included) in the arguments of calls to ``...Error(...)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).endswith("Error"):
            for argument in list(node.args) + [keyword.value for keyword in node.keywords]:
                found += [(inner.lineno, inner.value) for inner in ast.walk(argument)
                          if isinstance(inner, ast.Constant) and isinstance(inner.value, str)]
    return found


def test_errors_name_options_through_one_mechanism():
    """No error raised below the CLI spells a flag: options are {opt:NAME} markers (weightport.core.errors),
    rendered as --flags by the CLI and as keyword arguments for Python callers."""
    spelled = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
               for folder in ("converter", "formats") for path in sorted(Path(ROOT, folder).rglob("*.py"))
               if path.name not in CLI_ONLY for line, text in error_call_strings(path) if FLAG.search(text)]
    assert not spelled, "\n".join(spelled)
