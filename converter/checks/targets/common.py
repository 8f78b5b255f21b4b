"""What the target validators share: the structure check of an output of declared arrays, the report of an
output that cannot be read, the validator of array outputs no runtime here runs whole (npz, theano), the
whole-model checks' names, and the first diverging layer named from the layer checks."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from weightport.checks.layer_check import check_layers
from weightport.checks.report import FAIL, LAYER, NAMES, PASS, WHOLE_MODEL, Check, Report
from weightport.core.errors import WeightportError
from weightport.core.model import Model
from weightport.formats.numpy.target_check import (Declared, DeclaredSide, by_layer, channels_first, flattens,
                                                   keras3_source, layer_rtol, structure_problems)

STRUCTURE = "converted tensors match the source's layers, with the shapes their declared layouts give"
ReadOutput = Callable[[str], tuple[dict[tuple[str, str], Declared], list[str]]]


def names_check(name: str, problems: list[str]) -> Check:
    """The names/structure check: a pass, or a failure listing (the first 20 of) ``problems``."""
    more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
    return Check(name, FAIL if problems else PASS, NAMES, reason="; ".join(problems[:20]) + more)


def structure_check(source: Model, found: Mapping[tuple[str, str], Declared], problems: list[str] | None = None) -> Check:
    """Every weighted source tensor in ``found`` with the shape its declared layout gives, nothing else."""
    return names_check(STRUCTURE, structure_problems(source, found, problems))


def unreadable(report: Report, what: str, error: Exception) -> Report:
    """The report of an output that cannot be read at all: one failed check saying why."""
    text = error.problem if isinstance(error, WeightportError) else str(error)
    report.add(Check(STRUCTURE, FAIL, NAMES, reason=f"{what} cannot be read: {text}"))
    return report


def declared_layer_checks(report: Report, source: Model, found: Mapping[tuple[str, str], Declared],
                          side: DeclaredSide) -> float:
    """Every weighted layer computed from the declared arrays (``side``) against the source's oracle, with a
    float16 output's tolerance where it holds float16 arrays; the relative tolerance used."""
    rtol = layer_rtol(report.rtol, [item.array for item in found.values()], report.notes)
    report.checks.extend(check_layers(source, side, report.atol, rtol))
    return rtol


def validate_declared(source: Model, request: Any, target: str, read_output: ReadOutput, no_whole_model: str,
                      source_param: Callable[[str], str] = str) -> Report:
    """Validate an output of arrays with declared layouts that no runtime here runs whole: what
    ``read_output(path)`` finds (``{(layer, param): Declared}`` and its problems) against the source's
    structure (``source_param`` names a param as the source does), and every layer with scipy against the
    source framework's oracle; the whole-model check is skipped saying ``no_whole_model``."""
    report = request.report(source, target)
    request.recorded(source)  # a recorded input must fit the source, even though no runtime runs the whole model
    try:
        found, problems = read_output(request.converted_path)
    except (OSError, ValueError, WeightportError) as error:
        return unreadable(report, os.path.basename(request.shown_path or request.converted_path), error)
    report.add(structure_check(source, {(layer, source_param(param)): item for (layer, param), item in found.items()},
                               problems))
    side = DeclaredSide(by_layer(found), flattens(source, channels_first), keras3_source(source))
    declared_layer_checks(report, source, found, side)
    report.skip("whole model", no_whole_model, WHOLE_MODEL)
    return report


def first_failed_layer(report: Report) -> str | None:
    """The first failed layer check, with its likely cause, as the likely cause of a whole-model failure."""
    for check in report.checks:
        if check.check == LAYER and check.status == FAIL:
            return f"first diverging layer {check.layer} ({check.kind})" + (f": {check.likely_cause}"
                                                                           if check.likely_cause else "")
    return None


def without_reference(reason: str) -> str:
    """A whole-model check's skip reason when there is neither a recorded pair nor the source's own run
    (``reason``: why the shared reference could not run, weightport.checks.source_reference)."""
    return f"no recorded output, and {reason}" if reason else "no recorded output: give --input X.npy and --expected Y.npy"
