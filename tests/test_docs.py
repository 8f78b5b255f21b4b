"""The docs cannot drift: every command and code block in README.md and docs/ runs here, in a copy of
the working tree, as a new user would run it; and the site builds with mkdocs --strict.

README's `make test` is the one block not run (it is this suite); `.ci/run` is checked to run it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                         recursive=True))


def blocks(path: str) -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return [(lang, body) for lang, body in FENCE.findall(handle.read()) if lang in ("sh", "python")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the working tree (tracked and untracked, not ignored files), with its own fresh venv
    once the README's first block has made one."""
    copy = tmp_path_factory.mktemp("newuser") / "weightport"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(copy, name)) or copy, exist_ok=True)
            shutil.copy2(source, os.path.join(copy, name))
    return copy


def run_sh(body: str, cwd) -> None:
    env = dict(os.environ, PATH=f"{cwd}/.venv/bin:{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("VIRTUAL_ENV", None)
    for line in body.splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith("#"):
            continue
        if command == "make test":
            with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
                assert "make test" in handle.read()  # CI runs it; running it here would recurse
            continue
        result = subprocess.run(["bash", "-c", command + (" --force" if needs_force(command) else "")], cwd=cwd,
                                env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def needs_force(command: str) -> bool:
    """Docs convert to the same name in several places; reruns of a page overwrite."""
    return "weightport convert" in command and "--force" not in command


def run_python(body: str, cwd) -> None:
    python = os.path.join(cwd, ".venv", "bin", "python")
    result = subprocess.run([python if os.path.exists(python) else sys.executable, "-c", body], cwd=cwd,
                            capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, f"{body}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("page", DOCS)
def test_every_block_runs(workspace, page):
    found = blocks(page)
    for lang, body in found:
        (run_sh if lang == "sh" else run_python)(body, workspace)


def test_docs_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
