"""Every public function of the Python API (``weightport.__all__``) has a docstring example, and each
example runs as written, from a directory that has the repository's fixtures/ (outputs land there)."""

from __future__ import annotations

import doctest
import inspect
import os

import pytest

import weightport
from tests.conftest import FIXTURES

FUNCTIONS = [name for name in weightport.__all__ if inspect.isfunction(getattr(weightport, name))]


def test_the_public_functions_are_the_documented_ones():
    assert sorted(FUNCTIONS) == ["convert", "detect", "load", "save", "validate"]


@pytest.mark.requires("torch", "safetensors", "tensorflow")
@pytest.mark.parametrize("name", FUNCTIONS)
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    function = getattr(weightport, name)
    tests = doctest.DocTestFinder(recurse=False).find(function, name, globs={})
    examples = [example for test in tests for example in test.examples]
    assert examples, f"weightport.{name} has no >>> example in its docstring"
    os.symlink(FIXTURES, tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=lambda text: pytest.fail(text, pytrace=False))
    assert runner.summarize(verbose=False).failed == 0
