"""The java target as a Java developer uses it: packages, classpath resources, two models in one program.

Truth is the recorded output of the source framework (Keras 3 on TensorFlow, Keras 2 on Theano), never
numbers of our own. Java runs from a plain ``javac`` build (no Maven or Gradle needed) at ``--release 8``
with ``-Xlint:all -Werror``; ``javadoc -Xdoclint:all`` must be silent. Tests that need a JDK skip without
one, except under CI=true where they fail (tests/conftest.py require).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pytest

from tests.conftest import FIXTURES, require
from weightport.cli import main

KERAS3 = "keras3/cnn_flatten_dense"        # Keras 3 (TensorFlow), channels-last input (9, 11, 3)
THEANO = "keras_theano/k2_cnn_channels_first"  # Keras 2 on Theano: true convolution, input (3, 9, 7)
JAVAC = ["javac", "--release", "8", "-Xlint:all", "-Werror", "-encoding", "US-ASCII"]

CONSUMER = r'''
package com.example.app;

import com.example.model.CnnFlattenDense;
import com.example.model.CnnFlattenDenseWeights;
import com.example.vision.TheanoCnn;
import java.io.InputStream;
import java.nio.file.Paths;
import java.util.Locale;

/** Uses two converted models from the classpath in one program. */
public final class App {
    private App() {
    }

    static void print(String label, float[][] ys) {
        for (float[] y : ys) {
            StringBuilder line = new StringBuilder(label);
            for (float v : y) {
                line.append(' ').append(String.format(Locale.ROOT, "%.9e", v));
            }
            System.out.println(line);
        }
    }

    /**
     * Prints both models' outputs on their recorded inputs, loaded three ways.
     *
     * @param args the two input .npy files and the first model's manifest on disk
     * @throws Exception if anything fails
     */
    public static void main(String[] args) throws Exception {
        float[][] a = CnnFlattenDenseWeights.readNpy(Paths.get(args[0])).rows();
        float[][] b = com.example.vision.TheanoCnnWeights.readNpy(Paths.get(args[1])).rows();
        try (CnnFlattenDense first = CnnFlattenDense.load(); TheanoCnn second = TheanoCnn.load(2)) {
            print("keras3", first.forward(a));
            print("theano", second.forward(b));
            float[][] single = new float[b.length][];
            for (int n = 0; n < b.length; n++) {
                single[n] = second.forward(b[n]);
            }
            print("theano-single", single);
        }
        try (CnnFlattenDense fromPath = CnnFlattenDense.load(Paths.get(args[2]))) {
            print("keras3-path", fromPath.forward(a));
        }
        try (InputStream manifest = App.class.getResourceAsStream("/com/example/model/CnnFlattenDense.json");
             InputStream weights = App.class.getResourceAsStream("/com/example/model/CnnFlattenDense.bin");
             CnnFlattenDense fromStreams = CnnFlattenDense.load(manifest, weights)) {
            print("keras3-stream", fromStreams.forward(a));
        }
    }
}
'''


def convert(*args) -> int:
    return main(["convert", *[str(a) for a in args]])


def source(base: str) -> str:
    return os.path.join(FIXTURES, base + ".h5")


def recorded(base: str) -> np.ndarray:
    y = np.load(os.path.join(FIXTURES, base + ".output.npy"))
    return y.reshape(y.shape[0], -1).astype(np.float64)


def files_under(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def java_sources(folder) -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.endswith(".java"))


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One project folder holding two converted models (different packages), as `weightport convert` writes them."""
    root = tmp_path_factory.mktemp("java_project") / "project"
    assert convert(source(KERAS3), "-o", root, "--to", "java", "--emit-forward",
                   "--java-package", "com.example.model") == 0
    assert convert(source(THEANO), "-o", root, "--to", "java", "--emit-forward", "--assume-backend", "theano",
                   "--java-package", "com.example.vision", "--java-class", "TheanoCnn", "--force") == 0
    return root


def test_a_consumer_in_another_package_uses_two_models_from_the_classpath(project, tmp_path):
    """The done-when test: javac --release 8 of the generated sources and a consumer in com.example.app; both
    models reproduce what Keras (TensorFlow) and Keras (Theano) recorded, loaded from the classpath, a Path
    and streams, batched and one sample at a time, with and without worker threads."""
    require("jdk")
    app = tmp_path / "app" / "com" / "example" / "app"
    app.mkdir(parents=True)
    (app / "App.java").write_text(CONSUMER, encoding="ascii")
    classes = tmp_path / "classes"
    run([*JAVAC, "-d", str(classes), *java_sources(project / "src" / "main" / "java"), str(app / "App.java")])
    cp = os.pathsep.join([str(classes), str(project / "src" / "main" / "resources")])
    manifest = project / "src" / "main" / "resources" / "com" / "example" / "model" / "CnnFlattenDense.json"
    out = run(["java", "-cp", cp, "com.example.app.App", os.path.join(FIXTURES, KERAS3 + ".input.npy"),
               os.path.join(FIXTURES, THEANO + ".input.npy"), str(manifest)]).stdout
    rows: dict[str, list[list[float]]] = {}
    for line in out.splitlines():
        label, *values = line.split()
        rows.setdefault(label, []).append([float(v) for v in values])
    for label, base in [("keras3", KERAS3), ("theano", THEANO), ("theano-single", THEANO), ("keras3-path", KERAS3),
                        ("keras3-stream", KERAS3)]:
        want = recorded(base)
        np.testing.assert_allclose(np.array(rows[label]), want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()),
                                   err_msg=label)


def test_layout_of_the_project_and_the_manifest_lists_every_file(project):
    files = sorted(files_under(project))
    assert files == sorted([
        "README.CnnFlattenDense.md", "README.TheanoCnn.md",
        "src/main/java/com/example/model/CnnFlattenDense.java",
        "src/main/java/com/example/model/CnnFlattenDenseCheck.java",
        "src/main/java/com/example/model/CnnFlattenDenseWeights.java",
        "src/main/java/com/example/vision/TheanoCnn.java", "src/main/java/com/example/vision/TheanoCnnCheck.java",
        "src/main/java/com/example/vision/TheanoCnnWeights.java",
        "src/main/resources/com/example/model/CnnFlattenDense.bin",
        "src/main/resources/com/example/model/CnnFlattenDense.json",
        "src/main/resources/com/example/vision/TheanoCnn.bin", "src/main/resources/com/example/vision/TheanoCnn.json",
    ])
    manifest = json.loads(files_under(project)["src/main/resources/com/example/vision/TheanoCnn.json"])
    assert sorted(manifest["files"]) == sorted(f for f in files if "TheanoCnn" in f)
    assert manifest["java"] == {"package": "com.example.vision", "class": "TheanoCnn"}
    assert manifest["file"] == "TheanoCnn.bin"
    readme = files_under(project)["README.TheanoCnn.md"].decode()
    assert "import com.example.vision.TheanoCnn;" in readme and "TheanoCnn.load()" in readme


def test_output_is_reproducible_and_holds_no_path(tmp_path):
    """Converting twice gives the same bytes; no file names the folders the source or output were in."""
    outs = [tmp_path / "one", tmp_path / "elsewhere" / "two"]
    outs[1].parent.mkdir()
    for out in outs:
        assert convert(source(KERAS3), "-o", out, "--to", "java", "--emit-forward", "--java-package", "a.b") == 0
    first, second = files_under(outs[0]), files_under(outs[1])
    assert first == second
    fixtures, here = os.path.abspath(FIXTURES).encode(), str(tmp_path).encode()
    for name, data in first.items():
        assert fixtures not in data and here not in data and b"/work/" not in data, name
    manifest = json.loads(first[os.path.join("src", "main", "resources", "a", "b", "CnnFlattenDense.json")])
    import hashlib
    assert manifest["source"]["file"] == "cnn_flatten_dense.h5"
    assert manifest["source"]["sha256"] == hashlib.sha256(open(source(KERAS3), "rb").read()).hexdigest()


def test_force_removes_only_the_files_weightport_wrote(tmp_path, capsys):
    root = tmp_path / "project"
    root.mkdir()
    (root / "pom.xml").write_text("<project/>")
    package = root / "src" / "main" / "java" / "com" / "example"
    package.mkdir(parents=True)
    (package / "Service.java").write_text("package com.example; class Service {}")
    assert convert(source(KERAS3), "-o", root, "--to", "java", "--emit-forward", "--java-package", "com.example",
                   "--force") == 0
    assert (package / "CnnFlattenDense.java").exists()
    # Again without --emit-forward: the model class it wrote before is removed, the user's files stay.
    assert convert(source(KERAS3), "-o", root, "--to", "java", "--java-package", "com.example", "--force") == 0
    assert not (package / "CnnFlattenDense.java").exists() and (package / "CnnFlattenDenseWeights.java").exists()
    assert (root / "pom.xml").read_text() == "<project/>" and (package / "Service.java").exists()
    # A file of the user's where weightport would write is refused, and nothing changes.
    before = files_under(root)
    assert convert(source(KERAS3), "-o", root, "--to", "java", "--emit-forward", "--java-package", "com.example",
                   "--java-class", "Service", "--force") == 2
    assert "was not written by weightport" in capsys.readouterr().err
    assert files_under(root) == before
    assert sorted(os.listdir(tmp_path)) == ["project"]  # no staging folder left behind


@pytest.mark.parametrize("flag,value", [
    ("--java-package", "com.example.class"), ("--java-package", "com..x"), ("--java-package", "1x"),
    ("--java-package", "a-b"), ("--java-package", "x\\u000a"), ("--java-class", "String"),
    ("--java-class", "Arrays"), ("--java-class", "class"), ("--java-class", "a.B"), ("--java-class", "Caf\u00e9"),
    ("--java-class", "X\\u000aY"), ("--java-class", "Model */"),
])
def test_bad_java_names_are_usage_errors_before_writing(tmp_path, capsys, flag, value):
    assert convert(source(KERAS3), "-o", tmp_path / "out", "--to", "java", flag, value) == 2
    assert flag in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_java_options_are_refused_for_other_targets(tmp_path, capsys):
    assert convert(source(KERAS3), "-o", tmp_path / "out", "--to", "raw", "--java-package", "a.b") == 2
    assert "--java-package only applies to the java target" in capsys.readouterr().err


def test_a_hostile_source_name_gives_a_plain_class_that_compiles(tmp_path):
    """The default class comes from the source's file name: a payload in it becomes letters and digits."""
    require("jdk")
    import shutil
    marker = tmp_path / "pwned"
    hostile = tmp_path / f'9 x\\u000a new java.io.File("{marker.name}").createNewFile(); class \u00e9 *-.h5'
    shutil.copy(source(KERAS3), hostile)
    out = tmp_path / "out"
    assert convert(hostile, "-o", out, "--to", "java", "--emit-forward", "--java-package", "p") == 0
    (java_dir,) = [root for root, _, names in os.walk(out) if any(n.endswith(".java") for n in names)]
    names = sorted(os.listdir(java_dir))
    cls = names[0][:-len(".java")]
    assert re.fullmatch(r"Model9XU000aNewJavaIoFilePwnedCreateNewFileClass", cls), names
    classes = tmp_path / "classes"
    run([*JAVAC, "-d", str(classes), *java_sources(out)])
    cp = os.pathsep.join([str(classes), str(out / "src" / "main" / "resources")])
    got = run(["java", "-cp", cp, f"p.{cls}", os.path.join(FIXTURES, KERAS3 + ".input.npy")], cwd=tmp_path).stdout
    assert not marker.exists()
    want = recorded(KERAS3)
    np.testing.assert_allclose([[float(v) for v in line.split()] for line in got.splitlines()], want, rtol=1e-5,
                               atol=1e-5)


def test_npy_input_of_either_byte_order_and_width(project, tmp_path):
    """The model's main reads .npy input: little- and big-endian float32, float64 and float16 give what the
    values say (float16 input is rounded, so compared with the model run on the rounded float32 values)."""
    require("jdk")
    classes = tmp_path / "classes"
    run([*JAVAC, "-d", str(classes), *java_sources(project / "src" / "main" / "java")])
    cp = os.pathsep.join([str(classes), str(project / "src" / "main" / "resources")])
    x = np.load(os.path.join(FIXTURES, KERAS3 + ".input.npy"))
    outputs = {}
    for dtype in ("<f4", ">f4", "<f8", ">f8", ">f2"):
        path = tmp_path / f"x{dtype.replace('<', 'le').replace('>', 'be')}.npy"
        np.save(path, x.astype(dtype))
        outputs[dtype] = run(["java", "-cp", cp, "com.example.model.CnnFlattenDense", str(path)]).stdout
    assert outputs["<f4"] == outputs[">f4"] == outputs["<f8"] == outputs[">f8"]
    np.testing.assert_allclose([[float(v) for v in line.split()] for line in outputs[">f4"].splitlines()],
                               recorded(KERAS3), rtol=1e-5, atol=1e-5)
    assert outputs[">f2"] != outputs[">f4"]  # float16 input is read as float16 (rounded), not as bytes of float32
    np.save(tmp_path / "rounded.npy", x.astype(np.float16).astype(np.float32))
    assert run(["java", "-cp", cp, "com.example.model.CnnFlattenDense", str(tmp_path / "rounded.npy")]).stdout \
        == outputs[">f2"]


def test_javadoc_is_clean(project, tmp_path):
    """javadoc -Xdoclint:all over every generated source: no warning, no error."""
    require("jdk")
    result = subprocess.run(["javadoc", "-Xdoclint:all", "-quiet", "-d", str(tmp_path / "doc"),
                             *java_sources(project / "src" / "main" / "java")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "warning" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("samples", [1, 3])
def test_worker_threads_compute_what_torch_computes(tmp_path, samples):
    """--threads 2: one sample splits each matrix multiply by columns, a batch splits by samples; both give
    what torch computes for the module the ONNX file was exported from (a model big enough to split)."""
    require("jdk")
    require("torch")
    require("onnx")
    import torch
    from torch import nn
    torch.manual_seed(3)
    module = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                           nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16 * 13, 7)).eval()
    x = torch.randn(samples, 3, 32, 26)
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(module, x[:1], str(onnx_path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    with torch.inference_mode():
        want = module(x).numpy().astype(np.float64)
    out = tmp_path / "out"
    assert convert(onnx_path, "-o", out, "--to", "java", "--emit-forward", "--java-class", "Threaded") == 0
    classes = tmp_path / "classes"
    run([*JAVAC, "-d", str(classes), *java_sources(out)])
    np.save(tmp_path / "x.npy", x.numpy())
    cp = os.pathsep.join([str(classes), str(out / "src" / "main" / "resources")])
    got = run(["java", "-cp", cp, "Threaded", "--threads", "2", str(tmp_path / "x.npy")]).stdout
    np.testing.assert_allclose([[float(v) for v in line.split()] for line in got.splitlines()], want, rtol=1e-5,
                               atol=1e-5 * max(1.0, np.abs(want).max()))
