"""What a release ships: the sdist and the wheel, built as `python -m build` builds them (the `build` and
`setuptools>=77` of the test extra, no network): an SPDX MIT licence with its file, and an sdist whose
tests run from the unpacked archive because it carries fixtures/."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.conftest import ROOT, require


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist path, wheel path, build log) built from the working tree."""
    require("build")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir",
                             str(out), ROOT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return next(out.glob("weightport-*.tar.gz")), next(out.glob("weightport-*.whl")), result.stdout + result.stderr


def tracked(folder: str) -> set[str]:
    names = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(filter(None, names.stdout.split("\n")))


def test_license_is_spdx_mit_with_its_file(dist):
    _, wheel, log = dist
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert archive.read(license_file).decode().startswith("MIT License")
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert "SetuptoolsDeprecationWarning" not in log and "License classifiers are deprecated" not in log


def test_sdist_carries_license_tests_fixtures_and_docs(dist):
    sdist, _, _ = dist
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for folder in ("fixtures", "tests", "docs"):
        missing = tracked(folder) - names
        assert not missing, f"the sdist lacks {sorted(missing)[:5]}"
    assert {"LICENSE", "README.md", "Makefile", "mkdocs.yml", "pyproject.toml"} <= names


def test_the_sdists_own_tests_run_on_its_own_fixtures(dist, tmp_path):
    sdist, _, _ = dist
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    unpacked = next(tmp_path.glob("weightport-*"))
    assert not (unpacked / ".git").exists()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/theano/test_theano_pickles.py"], cwd=unpacked, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "error" not in result.stdout.splitlines()[-2]
