"""The Java of the ``java`` target as Java: package data that ships, compiles without warnings, and
treats names from model files as data.

A model file is untrusted input. Its layer names reach the generated WeightportModel.java, and javac
translates ``\\u000a`` into a line end before it reads anything, even inside a comment: a name in a
``//`` comment could end the comment and run code in ``forward()``. The hostile-name tests build a
model whose names carry such payloads (each would create a marker file), compile and run its Java,
and check that nothing ran and that the model computes what the same model with plain names does.
Tests that need a JDK skip without one, except under CI=true where they fail (tests/conftest.py require).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.resources import files

import numpy as np
import pytest

from tests.conftest import FIXTURES, ROOT, require
from weightport.api import load, save
from weightport.formats.plain import java as java_target

JAVA_DIR = os.path.join(ROOT, "formats", "plain", "java")
SRC = os.path.join(FIXTURES, "keras3", "cnn_flatten_dense.h5")
JAVAC = ["javac", "-Xlint:all", "-Werror", "-encoding", "US-ASCII"]


def compile_java(folder, *sources: str) -> None:
    """javac -Xlint:all -Werror: a warning fails like an error."""
    out = os.path.join(folder, "classes")
    os.makedirs(out, exist_ok=True)
    result = subprocess.run([*JAVAC, "-d", out, *sources], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def run_java(folder, *args: str) -> str:
    cp = os.pathsep.join([os.path.join(folder, "classes"), os.path.join(folder, "src", "main", "resources")])
    result = subprocess.run(["java", "-cp", cp, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def java_sources(folder) -> list[str]:
    """Every .java file under ``folder`` (a java target's project, or the resources folder)."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.endswith(".java"))


def project_files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                  for root, _, names in os.walk(folder) for name in names)


def generated_class(folder) -> str:
    """The model class a java target's project holds (from its manifest)."""
    (manifest,) = [path for path in project_files(folder) if path.endswith(".json")]
    with open(os.path.join(folder, manifest), encoding="utf-8") as handle:
        return json.load(handle)["java"]["class"]


# ------------------------------------------------------------------------------------ (a) package data


def test_every_java_resource_is_package_data():
    on_disk = sorted(name for name in os.listdir(JAVA_DIR) if name.endswith(".java"))
    assert on_disk == sorted(java_target.JAVA_RESOURCES)  # no stray file, none missing
    folder = files("weightport.formats.plain") / "java"
    for name in java_target.JAVA_RESOURCES:
        assert (folder / name).is_file(), name
        assert java_target.java_resource(name) == open(os.path.join(JAVA_DIR, name), encoding="utf-8").read()


def test_a_built_wheel_ships_the_java_resources(tmp_path):
    """What a pip install gets: build a wheel of the package sources and look inside."""
    require("setuptools")
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        os.makedirs(source, exist_ok=True)
        shutil.copy(os.path.join(ROOT, name), source / name)
    for folder in ("converter", "formats"):
        shutil.copytree(os.path.join(ROOT, folder), source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    import zipfile
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in java_target.JAVA_RESOURCES:
        assert f"weightport/formats/plain/java/{name}" in names, sorted(n for n in names if "plain" in n)


def test_raw_never_imports_the_java_target():
    """One direction only: java.py builds on raw.py; raw.py does not import java.py, not even lazily."""
    source = open(os.path.join(ROOT, "formats", "plain", "raw.py"), encoding="utf-8").read()
    tree = ast.parse(source)
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 for alias in node.names]
    assert not [name for name in imported if "java" in name], imported
    assert "importlib" not in " ".join(imported) and "__import__" not in source  # no import by name either


# ------------------------------------------------------------------------------ (b) compiles, no warnings


def test_the_resources_compile_on_their_own(tmp_path):
    """The loader, the checker and the model template (placeholders unfilled) are valid Java as they are."""
    require("jdk")
    compile_java(tmp_path, *java_sources(JAVA_DIR))


COMPILED = {  # fixture -> convert options: a channels-last CNN in OIHW, and true convolution in HWIO
    "keras3/cnn_flatten_dense": {},
    "tf_keras2/cnn_sequential": {"target_semantics": "convolution", "layout": "HWIO", "byte_order": "little"},
    "onnx/torch_convtranspose": {"dtype": "float64"},
}


@pytest.mark.parametrize("base", sorted(COMPILED))
def test_emitted_java_compiles_without_warnings(tmp_path, base):
    require("jdk")
    path = next(os.path.join(FIXTURES, base + ext) for ext in (".h5", ".onnx")
                if os.path.exists(os.path.join(FIXTURES, base + ext)))
    out = tmp_path / "out"
    save(load(path), str(out), to="java", emit_forward=True, java_class="Model", **COMPILED[base])
    assert project_files(out) == ["README.Model.md", "src/main/java/Model.java", "src/main/java/ModelCheck.java",
                                  "src/main/java/ModelWeights.java", "src/main/resources/Model.bin",
                                  "src/main/resources/Model.json"]
    written = project_files(out)
    compile_java(out, *java_sources(out))
    with open(out / "src" / "main" / "resources" / "Model.json", encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert sorted(manifest["files"]) == written
    lines = run_java(out, "ModelCheck").splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [entry["name"] for entry in manifest["tensors"]]


# ------------------------------------------------------------------------------ (c) names are data


def java_code_units(text: str) -> list[int]:
    data = text.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[k:k + 2], "big") for k in range(0, len(data), 2)]


NASTY = [
    "", "plain", "a\"b", "back\\slash", "ends\\", "\\", "\\\\", "\\u000a", "\\\\u000a", "\\\\\\u000a", "\\uuuu000a",
    "\\u0022", "\\\\u0022", "\\u005c", "*/", "/*", "//", "a\nb", "a\rb", "\r\n", "\x00", "\x001", "\x0012",
    "\x007", "\x01\x1f\x7f", "\t\b\f", "é", "日本語", "\u2028\u2029\x85", "\ufeff", "\U0001F600", "\ud800",
    "\udfff", "x\u000a", "%s%n", "@@SOURCE@@", "/*@BODY@*/", "\\\"", "\"\\", "\\\x00", "é\\", "\\é",
]


def test_java_string_literal_is_printable_ascii_with_no_stray_unicode_escape():
    for text in NASTY:
        literal = java_target.java_string_literal(text)
        assert literal.startswith('"') and literal.endswith('"') and len(literal) >= 2
        assert all(" " <= c <= "~" for c in literal), literal
        # Every \u javac would translate (a backslash after an even run of backslashes, then u) is one we
        # wrote for a non-ASCII character: it can never become a line end, a quote or a backslash.
        for match in re.finditer(r"(?<!\\)((?:\\\\)*)\\u+([0-9a-fA-F]{4})", literal):
            assert int(match.group(2), 16) >= 0x80, (text, literal)


def test_java_reads_each_literal_back_as_the_text(tmp_path):
    """javac is the oracle: every literal compiles and holds exactly the text's UTF-16 code units."""
    require("jdk")
    literals = ",\n        ".join(java_target.java_string_literal(text) for text in NASTY)
    (tmp_path / "Literals.java").write_text(
        "public final class Literals {\n"
        f"    static final String[] TEXTS = {{\n        {literals}\n    }};\n\n"
        "    public static void main(String[] args) {\n"
        "        StringBuilder out = new StringBuilder();\n"
        "        for (String text : TEXTS) {\n"
        "            out.append('[');\n"
        "            for (int k = 0; k < text.length(); k++) {\n"
        "                out.append(k == 0 ? \"\" : \" \").append((int) text.charAt(k));\n"
        "            }\n"
        "            out.append(\"]\\n\");\n"
        "        }\n"
        "        System.out.print(out);\n"
        "    }\n"
        "}\n", encoding="ascii")
    compile_java(tmp_path, str(tmp_path / "Literals.java"))
    got = run_java(tmp_path, "Literals").splitlines()
    assert got == ["[" + " ".join(str(u) for u in java_code_units(text)) + "]" for text in NASTY]


def payload(marker) -> str:
    """A name that, pasted into a // comment, ends it (javac reads \\u000a as a line end) and runs code."""
    return (f'\\u000a try {{ new java.io.File("{marker}").createNewFile(); }} catch (Exception e) {{ }} //')


def renamed_model(names: dict[str, str], classes: dict[str, str] | None = None, source: dict | None = None):
    """cnn_flatten_dense with layers renamed (inputs follow), source classes and source info replaced."""
    model = load(SRC)
    model.layers = [copy.copy(layer) for layer in model.layers]
    for layer in model.layers:
        layer.inputs = [names.get(name, name) for name in layer.inputs]
        layer.source_class = (classes or {}).get(layer.name, layer.source_class)
        layer.name = names.get(layer.name, layer.name)
    model.source = dataclasses.replace(model.source, **(source or {}))
    return model


def forward(tmp_path, model, name: str) -> tuple[str, str]:
    """(stdout of the model class on the recorded input, its generated source with the class names put
    back to the template's)."""
    out = tmp_path / name
    save(model, str(out), to="java", emit_forward=True)
    compile_java(out, *java_sources(out))
    cls = generated_class(out)
    text = open(out / "src" / "main" / "java" / f"{cls}.java", encoding="utf-8").read()
    text = re.sub(rf"\b{cls}(Weights|Check)?\b", lambda m: "Weightport" + (m.group(1) or "Model"), text)
    return run_java(out, cls, SRC.replace(".h5", ".input.npy")), text


def comments(java: str) -> list[str]:
    """The text of every comment of a Java source (string and char literals skipped)."""
    found, k = [], 0
    while k < len(java):
        if java[k] in "\"'":
            end = k + 1
            while java[end] != java[k]:
                end += 2 if java[end] == "\\" else 1
            k = end + 1
        elif java.startswith("//", k):
            end = java.find("\n", k)
            found.append(java[k:end])
            k = end
        elif java.startswith("/*", k):
            end = java.index("*/", k) + 2
            found.append(java[k:end])
            k = end
        else:
            k += 1
    return found


GENERATED_COMMENT = re.compile(r"// (layer \d+: [a-z_]+|[A-Z]+ -> [A-Z]+|flatten in [A-Z]+ order|"
                               r"kernel stored for true convolution: (packed|read) rotated 180 degrees)")


def assert_names_only_in_literals(java: str) -> None:
    assert all(c == "\n" or " " <= c <= "~" for c in java)  # printable ASCII lines
    template = java_target.java_resource(java_target.MODEL_FILE).replace("/*@PACKAGE@*/", "")
    for comment in comments(java):
        assert comment in template or GENERATED_COMMENT.fullmatch(comment), comment


def test_a_hostile_layer_name_is_data_not_code(tmp_path):
    """Payloads in a layer name and in a layer's source class: on the old generator they became code in
    forward() and created the markers; now they are string literals and nothing runs."""
    require("jdk")
    markers = [tmp_path / "pwned-by-name", tmp_path / "pwned-by-class"]
    hostile = renamed_model({"pool": "pool" + payload(markers[0])}, {"relu": "Activation" + payload(markers[1])})
    got, java = forward(tmp_path, hostile, "hostile")
    assert not [m for m in markers if m.exists()], "the payload in a name ran"
    assert_names_only_in_literals(java)
    plain, _ = forward(tmp_path, load(SRC), "plain")
    assert got == plain and got.strip()
    want = np.load(SRC.replace(".h5", ".output.npy")).reshape(-1)
    np.testing.assert_allclose([float(v) for v in got.split()], want, rtol=1e-5, atol=1e-5)


def test_every_hostile_character_in_names_round_trips(tmp_path):
    """Quotes, backslashes, comment ends, line ends, NUL, non-ASCII and \\u sequences in layer (hence
    tensor) names and in the source's path, version and backend: the Java compiles, finds every tensor
    by its exact name (the literal must equal what the manifest's JSON says) and computes the same."""
    require("jdk")
    marker = tmp_path / "pwned"
    names = {
        "conv_a": 'c\\u000a"q\\"*/\n\r\x00é\U0001F600\u2028' + payload(marker),
        "bn": "bn\x001\x7f\t*/ /* \\",
        "relu": "relu\\\\u0022\\u005c",
        "conv_same_s2": "日本語 conv\ud800",
        "pool": "pool" + payload(marker),
        "flatten": "\\",
        "dense": 'dense\\"); System.exit(3); //',
    }
    source = {"path": "/tmp/x" + payload(marker) + "*/\n", "version": "3\\u000a" + payload(marker),
              "backend": 'tf"\\u0022'}
    hostile = renamed_model(names, {"dense": "Dense" + payload(marker)}, source)
    got, java = forward(tmp_path, hostile, "hostile")
    assert not marker.exists()
    assert_names_only_in_literals(java)
    for name in names.values():
        assert java_target.java_string_literal(name) in java
    plain, _ = forward(tmp_path, load(SRC), "plain")
    assert got == plain and got.strip()


def test_a_non_finite_epsilon_is_refused_not_written():
    from weightport.core.errors import UnsupportedError
    from weightport.formats.plain import raw
    from weightport.core.options import WriteOptions
    model = load(SRC)
    model.layer("bn").attrs["epsilon"] = float("nan")
    prepared = raw.prepare(model, WriteOptions())
    with pytest.raises(UnsupportedError, match="epsilon"):
        java_target.generate_model(model, prepared.plan, prepared.chosen, prepared.orders, prepared.manifest)
