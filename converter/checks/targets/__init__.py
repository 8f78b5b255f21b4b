"""Validators of converted outputs, one module per target runtime, and how the registry names them.

Each ``TARGETS`` entry of the registry (``weightport.formats``) names its validator *relative to this
layer*, ``"module:function"`` under ``weightport.checks`` (``"validate:validate_torch_file"``,
``"targets.keras:validate_keras"``): the registry is data and imports nothing above it; this layer resolves
the name (:func:`validator`) and runs it (:func:`run_validator`).  A validator is
``(source: Model, request: Request, read) -> Report``.

The runtime's half of each check (running a layer in Keras, onnxruntime, scipy or Java; reading the output
as its runtime does) lives in its framework's folder (``weightport.formats.<framework>.target_check``);
the modules here turn what it finds into checks and a report.  Their convention: a piece that cannot check
raises ``NotImplementedError`` (a skip, with the reason), one that finds the output unusable raises
:class:`weightport.core.oracle.Refused` (a failure, with the reason).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from weightport.checks.report import Report

PACKAGE = "weightport.checks"


def validator(name: str) -> Callable[..., Report]:
    """The validator a registry entry names (``"module:function"`` relative to :data:`PACKAGE`)."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(f"{PACKAGE}.{module}"), function)


def run_validator(name: str, source: Any, request: Any, read: Callable[[str], Any]) -> Report:
    """Run the named validator; the report names the final output, never the staging copy it checked."""
    report = validator(name)(source, request, read)
    if request.shown_path:
        shown(report, request.converted_path, request.shown_path)
    return report


def shown(report: Report, checked: str, final: str) -> None:
    """Every path of the staging copy ``checked`` in the report's text replaced by the final output's: the
    copy itself (and files named after it), then its folder (files written beside it, a spec, a sidecar)."""
    pairs = [(path, final) for path in dict.fromkeys((checked, os.path.abspath(checked), os.path.realpath(checked)))]
    final_folder = os.path.dirname(final)
    pairs += [(os.path.dirname(path) + os.sep, final_folder + os.sep if final_folder else "")
              for path, _ in list(pairs) if os.path.dirname(path)]

    def replaced(text: str | None) -> str | None:
        for old, new in pairs:
            text = text.replace(old, new) if text else text
        return text
    report.converted = final
    for check in report.checks:
        check.name, check.reason, check.likely_cause = replaced(check.name), replaced(check.reason), \
            replaced(check.likely_cause)
    report.notes = [replaced(note) for note in report.notes]
