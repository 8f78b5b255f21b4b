"""`convert --validate` for every target (issue 19): the output is written to a staging folder, checked in
the target's own runtime, and moved into place whole (a theano spec, an npz sidecar with it) only when the
report accepts it; the report names the final output, never the staging copy it checked."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import fixture_path, require

pytestmark = pytest.mark.requires("tensorflow", "keras", "onnx", "onnxruntime", "torch")

BASE = "keras3/cnn_flatten_dense"
SOURCE = fixture_path(BASE + ".h5")
RECORDED = ("--input", fixture_path(BASE + ".input.npy"), "--expected", fixture_path(BASE + ".output.npy"))
OUTPUTS = [  # (--to, output name, what the writer puts beside it)
    ("torch", "out.safetensors", ()),
    ("keras", "out.h5", ()),
    ("keras", "out.weights.h5", ()),
    ("onnx", "out.onnx", ()),
    ("npz", "out.npz", ("out.npz.json",)),
    ("theano", "out.pkl", ("out.spec.json",)),
    ("raw", "out", ()),
    ("java", "out", ()),
]


def leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".weightport-")]


@pytest.mark.parametrize("to,name,beside", OUTPUTS, ids=[f"{to}-{name}" for to, name, _ in OUTPUTS])
def test_a_validated_output_is_moved_into_place_whole_and_the_report_names_it(run_cli, tmp_path, to, name, beside):
    if to == "java":
        require("jdk")
    out = tmp_path / name
    code, stdout, err = run_cli("convert", SOURCE, "-o", out, "--to", to, "--validate", *RECORDED)
    assert code == 0, stdout + err
    assert sorted(os.listdir(tmp_path)) == sorted([name, *beside]), os.listdir(tmp_path)
    assert f"validate {SOURCE} -> {out} (" in stdout and "result: PASS" in stdout, stdout
    assert ".weightport-" not in stdout + err and not leftovers(tmp_path)
    code, again, err = run_cli("validate", SOURCE, out, *RECORDED)  # complete where it now is: spec, sidecar
    assert code == 0 and "result: PASS" in again, again + err


@pytest.mark.parametrize("to,name,beside", [o for o in OUTPUTS if o[2]], ids=["npz", "theano"])
def test_the_api_reports_the_final_output_and_writes_its_companion(tmp_path, to, name, beside):
    from weightport import convert
    out = str(tmp_path / name)
    result = convert(SOURCE, out, to=to, validate=True, input=RECORDED[1], expected=RECORDED[3])
    assert result.outputs == [out] and result.report.converted == out and result.report.status == "pass"
    assert ".weightport-" not in result.report.to_json()
    assert all(os.path.isfile(tmp_path / companion) for companion in beside)


@pytest.mark.parametrize("to", ["npz", "theano"])
def test_a_failed_validation_writes_neither_the_output_nor_its_companion(run_cli, tmp_path, monkeypatch, to):
    """The writer made to flip a kernel: FAIL naming the layer, and nothing of the output where it would go."""
    from weightport.formats.numpy import npz
    from weightport.formats.theano import writer as theano_writer
    module = npz if to == "npz" else theano_writer
    plan_of = npz.npz_plan if to == "npz" else theano_writer.theano_plan

    def flipping_plan(model, options):
        plan = plan_of(model, options)
        item = next(t for t in plan.tensors if t.key.startswith("conv_a.") and len(t.shape) == 4)
        original = item.load
        object.__setattr__(item, "load", lambda: np.ascontiguousarray(np.flip(original(), (2, 3))))
        return plan
    monkeypatch.setattr(module, "npz_plan" if to == "npz" else "theano_plan", flipping_plan)
    out = tmp_path / ("out.npz" if to == "npz" else "out.pkl")
    code, stdout, err = run_cli("convert", SOURCE, "-o", out, "--to", to, "--validate", *RECORDED)
    assert code == 1 and "not written" in err, stdout + err
    assert "FAIL layer conv_a (Conv2D)" in stdout and f"-> {out} (" in stdout, stdout
    assert os.listdir(tmp_path) == [] and ".weightport-" not in stdout + err


def test_force_replaces_a_validated_raw_folder(run_cli, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        code, stdout, err = run_cli("convert", SOURCE, "-o", out, "--to", "raw", "--validate", "--force", *RECORDED)
        assert code == 0, stdout + err
    assert os.path.isfile(out / "manifest.json") and not leftovers(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, stdout, err = run_cli("convert", SOURCE, "-o", foreign, "--to", "raw", "--validate", "--force", *RECORDED)
    assert code == 2 and "not written by weightport" in err and os.listdir(foreign) == ["notes.txt"]


def files_under(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(folder, name), root): open(os.path.join(folder, name), "rb").read()
            for folder, _, names in os.walk(root) for name in names}


def test_a_validated_java_project_goes_into_the_users_folder_by_the_direct_writes_rules(run_cli, tmp_path):
    """A validated java output is moved into an existing project as a direct write puts it: the user's files
    stay, the previous output's files (listed in its manifest) are replaced or removed, a clash with a file
    weightport did not write is refused with nothing changed."""
    require("jdk")
    project = tmp_path / "project"
    (project / "src" / "main" / "java" / "com" / "example").mkdir(parents=True)
    (project / "pom.xml").write_text("<project/>")
    (project / "src" / "main" / "java" / "com" / "example" / "App.java").write_text("class App {}")
    args = ("--to", "java", "--java-package", "com.example", "--validate", "--force", *RECORDED)
    code, stdout, err = run_cli("convert", SOURCE, "-o", project, *args, "--emit-forward")
    assert code == 0 and "result: PASS" in stdout, stdout + err
    model = "src/main/java/com/example/CnnFlattenDense.java"
    first = files_under(project)
    assert first["pom.xml"] == b"<project/>" and model in first and not leftovers(tmp_path)
    code, stdout, err = run_cli("convert", SOURCE, "-o", project, *args)  # no --emit-forward: its model goes
    assert code == 0, stdout + err
    second = files_under(project)
    assert model not in second and set(second) == set(first) - {model} and not leftovers(tmp_path)
    assert second["src/main/java/com/example/App.java"] == b"class App {}"
    code, stdout, err = run_cli("validate", SOURCE, project, *RECORDED)
    assert code == 0 and "result: PASS" in stdout, stdout + err
    (project / model).write_text("class CnnFlattenDense {}")  # now the user's own file
    code, stdout, err = run_cli("convert", SOURCE, "-o", project, *args, "--emit-forward")
    assert code == 2 and "was not written by weightport" in err, err
    assert files_under(project) == {**second, model: b"class CnnFlattenDense {}"} and not leftovers(tmp_path)


def test_the_report_shows_the_final_paths_in_every_text(tmp_path):
    """Whatever a runtime says about the staged copy (its path, a file beside it) is shown at the final path."""
    from weightport.checks.report import FAIL, Check, Report
    from weightport.checks.targets import shown
    staging = tmp_path / ".weightport-x-1-abc.tmp"
    staged, final = str(staging / "out.pkl"), str(tmp_path / "final" / "out.pkl")
    report = Report("src.h5", staged)
    report.add(Check(f"loaded {staged}", FAIL, reason=f"{staging}/out.spec.json: bad; {os.path.abspath(staged)}",
                     likely_cause=f"{staged} is short"))
    report.notes.append(f"read {staged}")
    shown(report, staged, final)
    assert report.converted == final and str(staging) not in report.to_json()
    check = report.checks[0]
    assert check.name == f"loaded {final}" and check.likely_cause == f"{final} is short"
    assert check.reason == f"{tmp_path}/final/out.spec.json: bad; {final}" and report.notes == [f"read {final}"]
