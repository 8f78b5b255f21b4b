"""The shape of the package: one import namespace, imports in one direction, one registry that the CLI,
the API and the docs agree with, rule provenance that exists, and a wheel that installs only weightport.

Layers, lowest first (docs/architecture.md):
  core       weightport.core.*               numpy-only: model, layout algebra, steps, plans, rules, I/O
  formats    weightport.formats.<framework>  readers, writers, planner, layouts, oracle of one framework
  registry   weightport.formats              names every format and target (imports them by name only)
  checks     weightport.checks.*             validation, layer checks, detection
  top        weightport, weightport.api, weightport.cli, weightport.__main__
A module imports only its own layer or lower ones, never in a cycle, function-local imports included.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

FOLDERS = {"weightport": Path(ROOT) / "converter", "weightport.formats": Path(ROOT) / "formats"}
RANKS = {"core": 0, "formats": 1, "registry": 2, "checks": 3, "top": 4}


def module_files() -> dict[str, Path]:
    """Every module of the package by its import name (converter/ is weightport, formats/ weightport.formats)."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package] + parts)] = path
    return modules


def layer_of(module: str) -> str:
    if module.startswith("weightport.core"):
        return "core"
    if module == "weightport.formats":
        return "registry"
    if module.startswith("weightport.formats."):
        return "formats"
    if module.startswith("weightport.checks"):
        return "checks"
    return "top"


def framework_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "formats" else None


MODULE_NAME = re.compile(r"weightport(?:\.\w+)+(?::\w+)?")  # "weightport.checks.report", "weightport.x.y:function"
BY_NAME = ("import_module", "__import__")  # importlib.import_module(name), __import__(name)


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """weightport modules imported anywhere in ``path`` (top level or inside functions), statements and
    strings alike: a string that is a weightport module's name (``"weightport.checks.report"``,
    ``"weightport.formats.keras.oracle:source_conv"``) counts as an import of it, since a table or an
    ``importlib.import_module`` call imports it by that name."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            names = [name for name in [node.value.partition(":")[0]] if name in known]  # not "weightport.graph"
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imports_of(path, module, set(files)) for module, path in files.items()}


def test_no_top_level_packages_but_weightport():
    assert set(module_files()) >= {"weightport", "weightport.api", "weightport.cli", "weightport.__main__",
                                   "weightport.formats", "weightport.core.layout"}
    assert all(name == "weightport" or name.startswith("weightport.") for name in module_files())


def test_imports_go_one_way():
    upward = []
    for module, imported in import_graph().items():
        for other in imported:
            if other in ("weightport.formats",) and layer_of(module) == "formats":
                upward.append(f"{module} -> {other} (a framework must not import the registry)")
            elif RANKS[layer_of(other)] > RANKS[layer_of(module)]:
                upward.append(f"{module} ({layer_of(module)}) -> {other} ({layer_of(other)})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def imports_by_computed_name(path: Path) -> list[int]:
    """Lines of ``path`` calling ``import_module``/``__import__`` on anything but a string literal."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and node.args and not isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in BY_NAME:
                lines.append(node.lineno)
    return lines


def test_only_the_registry_and_the_layers_above_it_import_by_computed_name():
    """A framework or core module imports by statement or by a literal name (which the graph above sees);
    importing by a computed name is the registry's and the check layer's way of resolving the names their
    tables hold, never a way round the layering."""
    offenders = [f"{module}:{line}" for module, path in module_files().items() if layer_of(module) in ("core", "formats")
                 for line in imports_by_computed_name(path)]
    assert not offenders, offenders


def test_the_import_checks_see_imports_by_name(tmp_path):
    """The layering cannot be dodged with importlib: a framework module naming the check layer is upward."""
    known = {"weightport.checks.report", "weightport.checks", "weightport.formats.keras.oracle"}
    hidden = tmp_path / "hidden.py"
    hidden.write_text("import importlib\n\ndef api():\n    return importlib.import_module('weightport.checks.report')\n"
                      "ORACLE = 'weightport.formats.keras.oracle:source_conv'\n"
                      "def dynamic(name):\n    return __import__(name)\n")
    assert imports_of(hidden, "weightport.formats.keras.hidden", known) == {"weightport.checks.report",
                                                                            "weightport.formats.keras.oracle"}
    assert imports_by_computed_name(hidden) == [7]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_between_modules_or_frameworks():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    frameworks: dict[str, set[str]] = {}
    for module, imported in graph.items():
        mine = framework_of(module)
        if mine:
            frameworks.setdefault(mine, set()).update(
                other for other in map(framework_of, imported) if other and other != mine)
    assert find_cycle(frameworks) is None, " -> ".join(find_cycle(frameworks) or [])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_imports_nothing_heavy():
    heavy = re.compile(r"^\s*(import|from)\s+(torch|tensorflow|keras|onnx|onnxruntime|scipy|safetensors)\b", re.M)
    offenders = [module for module, path in module_files().items()
                 if layer_of(module) == "core" and heavy.search(path.read_text(encoding="utf-8"))]
    assert not offenders


def test_registry_cli_and_api_agree():
    from weightport.cli import build_parser
    from weightport.core.options import WriteOptions
    from weightport.formats import FORMATS, OPTION_FLAGS, TARGETS, entry, target_names
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("convert", "explain"):
        to = next(a for a in commands[command]._actions if a.dest == "to")
        assert tuple(to.choices) == target_names()
    option_fields = {f for f in WriteOptions.__dataclass_fields__}
    for item in TARGETS:
        default = entry(item.default_format)
        assert default.writes and default.target == item.name, item
        module, _, function = item.planner.partition(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), item.planner
        assert set(item.options) <= option_fields and all(name in OPTION_FLAGS for name in item.options)
    from weightport.checks.targets import validator
    for item in TARGETS:  # every target is checked in its own runtime by a validator of the check layer
        assert item.validator and ":" in item.validator, item
        assert callable(validator(item.validator)), item.validator
        assert layer_of(validator(item.validator).__module__) == "checks", item.validator
        assert item.check and "not checked" not in item.check, item
    for item in FORMATS:
        if item.reads:
            reader = item.reader_module()
            assert reader.EXTENSIONS and callable(reader.sniff) and callable(reader.read), item
        if item.writes:
            assert item.target in target_names() and callable(item.writer_module().write), item


def test_docs_format_table_is_the_registry():
    from weightport.formats import format_table
    for page in ("README.md", "docs/formats/index.md"):
        text = (Path(ROOT) / page).read_text(encoding="utf-8")
        assert format_table() in text, f"{page}: paste the output of weightport.formats.format_table()"


def test_every_rule_provenance_path_exists():
    from weightport.core.rules import RULES
    paths = [path for rule in RULES for path in re.findall(r"\b((?:tests|fixtures|docs)/[\w./-]+\w)", rule.provenance)]
    assert paths
    missing = [path for path in paths if not (Path(ROOT) / path).exists()]
    assert not missing, missing


def test_python_m_weightport_and_a_shadowing_formats_module(tmp_path):
    (tmp_path / "formats.py").write_text("raise SystemExit('the user formats.py was imported')\n")
    (tmp_path / "converter.py").write_text("raise SystemExit('the user converter.py was imported')\n")
    result = subprocess.run([sys.executable, "-m", "weightport", "--version"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("weightport "), result.stderr
    code = "from weightport import load, save, convert; import weightport.formats; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.skipif(os.environ.get("WEIGHTPORT_SKIP_WHEEL") == "1", reason="wheel build disabled")
def test_wheel_installs_only_weightport_with_its_java_resources(tmp_path):
    import shutil
    source = tmp_path / "src"  # a copy: building leaves build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "converter", "formats"):
        copy = shutil.copytree if (Path(ROOT) / name).is_dir() else shutil.copy
        copy(Path(ROOT) / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                   if copy is shutil.copytree else {}))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("weightport-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"weightport"}, top
    assert "weightport/__main__.py" in names and "weightport/formats/keras/h5_reader.py" in names
    missing = [module for module in module_files()  # every subpackage listed in pyproject.toml's packages
               if f"{module.replace('.', '/')}.py" not in names and f"{module.replace('.', '/')}/__init__.py" not in names]
    assert not missing, missing
    assert any(name.startswith("weightport/formats/plain/java/") and name.endswith(".java") for name in names)


# -- behaviour the registry decides -------------------------------------------------------------------

H5 = os.path.join(ROOT, "fixtures", "keras3", "cnn_flatten_dense.h5")


@pytest.mark.parametrize("to, output", [("keras", "out.h5"), ("theano", "out.pkl"), ("onnx", "out.onnx")])
def test_rename_is_refused_where_a_runtime_fixes_the_names(run_cli, tmp_path, to, output):
    rename = tmp_path / "rename.json"
    rename.write_text('{"conv2d": "features.0"}')
    code, out, err = run_cli("convert", H5, "-o", tmp_path / output, "--to", to, "--rename", rename)
    assert code == 2 and "--rename only applies to the" in err and f"not {to}" in err, err
    assert not (tmp_path / output).exists()
    from weightport import load, save
    from weightport.core.errors import UsageError
    with pytest.raises(UsageError, match="^rename only applies"):
        save(load(H5), str(tmp_path / output), to=to, rename={"conv2d": "features.0"})


def test_rename_is_honoured_by_the_torch_target(run_cli, tmp_path):
    from safetensors.numpy import load_file
    rename = tmp_path / "rename.json"
    rename.write_text('{"conv_a": "features.0"}')
    code, out, err = run_cli("convert", H5, "-o", tmp_path / "out.safetensors", "--rename", rename)
    assert code == 0, err
    keys = load_file(str(tmp_path / "out.safetensors"))
    assert "features.0.weight" in keys and "conv_a.weight" not in keys


@pytest.mark.parametrize("flag, value, output", [("--template", H5, "out.safetensors"),
                                                  ("--strict-against", "m.py:M", "out.h5"),
                                                  ("--emit-forward", None, "out.safetensors"),
                                                  ("--byte-order", "little", "out.onnx")])
def test_an_option_of_another_target_is_refused_not_ignored(run_cli, tmp_path, flag, value, output):
    args = [flag] + ([value] if value else [])
    code, out, err = run_cli("convert", H5, "-o", tmp_path / output, *args)
    assert code == 2 and f"{flag} only appl" in err, err
    assert not (tmp_path / output).exists()


def test_reader_warnings_reach_every_target(tmp_path):
    from weightport import load, save
    from weightport.formats import TARGETS
    outputs = {"torch": "o.safetensors", "keras": "o.h5", "onnx": "o.onnx", "npz": "o.npz", "theano": "o.pkl",
               "raw": "raw", "java": "java"}
    assert set(outputs) == {item.name for item in TARGETS}
    for to, name in outputs.items():
        model = load(H5)
        model.warn("a reader's note about this file")
        result = save(model, str(tmp_path / name), to=to)
        assert result.warnings.count("a reader's note about this file") == 1, (to, result.warnings)


def test_explain_shows_what_the_onnx_writer_writes_into_a_template(run_cli, tmp_path):
    lstm = os.path.join(ROOT, "fixtures", "onnx", "lstm_bidirectional.onnx")
    code, out, err = run_cli("explain", lstm, "--to", "onnx", "--template", lstm, "--json")
    assert code == 0, err
    import json
    keys = [row["key"] for row in json.loads(out)["tensors"]]
    assert keys == ["W[0]", "R[0]", "B[0][0]", "B[0][1]", "W[1]", "R[1]", "B[1][0]", "B[1][1]"]
    code, out, err = run_cli("explain", H5, "--to", "torch", "--template", lstm)
    assert code == 2 and "--template only applies to the onnx target" in err
