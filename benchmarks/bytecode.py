"""Compile weightport's modules to bytecode before timing it, as an installed copy has them.

``pip install`` writes every module's ``.pyc``; a checkout run through an editable install compiles each
module from source on every start when ``PYTHONDONTWRITEBYTECODE`` is set (as on the development
machine), which added about 60 ms to each conversion's start-up and counted against weightport what
its users never pay.  The benchmarks call :func:`compile_weightport` first.
"""

from __future__ import annotations

import compileall
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_weightport() -> None:
    """Write ``__pycache__`` bytecode for the ``converter/`` and ``formats/`` trees (the ``weightport`` package)."""
    for folder in ("converter", "formats"):
        if not compileall.compile_dir(os.path.join(ROOT, folder), quiet=1):
            raise SystemExit(f"could not compile {folder}/ to bytecode")
