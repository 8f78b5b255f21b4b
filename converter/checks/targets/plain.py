"""The raw and java targets' validator: a plain-array folder checked in its own runtime.

* ``weights.bin`` read by ``manifest.json`` alone (:class:`weightport.formats.plain.target_check.Folder`:
  dtype, byte order, offsets, shapes, SHA-256, declared layout and semantics), every weighted layer run from
  those arrays with scipy as declared against the source framework's oracle;
* a ``java`` project (``src/main/resources/<package>/<C>.json`` and ``src/main/java/<package>/``), with a
  JDK on PATH: its own Java compiled (into a temporary folder) and run, only when it is the Java weightport
  emits: ``<package>.<C>Check MANIFEST`` must read every tensor as the manifest says, and the model class
  (``--emit-forward``) runs the whole model in float32 on the recorded input (the first diverging layer
  named when it fails), or on random input without one (it runs; that covers no layer).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from weightport.checks.report import FAIL, NAMES, PASS, WHOLE_MODEL, Check, Report, compare
from weightport.checks.targets.common import declared_layer_checks, first_failed_layer, structure_check, unreadable
from weightport.core.errors import WeightportError
from weightport.core.model import Model
from weightport.core.oracle import Refused
from weightport.formats.numpy.target_check import DeclaredSide, by_layer, flattens, keras3_source
from weightport.formats.plain.target_check import (MANIFEST, WEIGHTS, Folder, compiled_java, foreign_java, java_forward,
                                                   missing_jdk, random_run, wrong_sums)

RUNTIME = "runtime"  # a check of the target's runtime that covers no layer (no source reference)
HASHES = "the weights file holds the bytes whose SHA-256 the manifest gives"
LOADER = "the Java loader (the Check class) reads every tensor as the manifest says"
WHOLE = "whole model in Java (the model class, float32) vs recorded output"
RUNS = "the emitted model class runs on random input (no reference without --input/--expected)"
NO_FORWARD = "a raw folder has no forward pass of its own (--to java --emit-forward writes one)"


def validate_plain(source: Model, request: Any, read: Any) -> Report:
    """The raw and java targets' validator (the registry names it): the folder read by its manifest, every
    layer run with scipy against the source framework's oracle, and (java, with a JDK) the folder's own Java
    compiled and run.  ``read``, weightport's reader, is not used."""
    path = request.converted_path
    try:
        folder = Folder(path, source.source.path)
    except (OSError, ValueError, WeightportError) as error:
        shown = os.path.basename(os.path.normpath(request.shown_path or path))
        java = not os.path.exists(os.path.join(path, MANIFEST))
        what = f"{shown} (a java project's manifest and weights)" if java else f"{shown}/{MANIFEST} with {WEIGHTS}"
        return unreadable(request.report(source, "java" if java else "raw"), what, error)
    java = folder.java is not None
    report = request.report(source, "java" if java else "raw")
    x, expected = request.recorded(source, report)  # recorded arrays, or the source run by its own framework
    report.add(structure_check(source, folder.found, folder.problems))
    report.add(Check(HASHES, FAIL if folder.bad_hashes else PASS, NAMES,
                     reason=f"bytes differ from the manifest's sha256 in: {', '.join(folder.bad_hashes)}"
                     if folder.bad_hashes else ""))
    side = DeclaredSide(by_layer(folder.found), flattens(source, folder.flatten_order), keras3_source(source))
    rtol = declared_layer_checks(report, source, folder.by_name, side)
    if not java:
        report.skip("whole model", NO_FORWARD, WHOLE_MODEL)
        return report
    java_checks(report, folder, source, x, expected, rtol)
    return report


def java_checks(report: Report, folder: Folder, source: Model, x: np.ndarray | None,
                expected: np.ndarray | None, rtol: float) -> None:
    """Compile the folder's Java in a temporary folder and run its check program and (when emitted) its model;
    both skipped, saying why, without a JDK or when the Java is not weightport's own."""
    whole = WHOLE if folder.has_model() else "whole model"
    missing, foreign = missing_jdk(), ""
    if missing:
        why = f"{' and '.join(missing)} not on PATH: the folder's Java was not run (install a JDK, e.g. " \
              "apt-get install openjdk-17-jdk-headless)"
    else:
        foreign = foreign_java(folder)
        why = f"not compiled or run: {foreign} (weightport runs only the Java it emits)"
    if missing or foreign:
        report.skip(LOADER, why, NAMES)
        report.skip(whole, why, WHOLE_MODEL)
        return
    try:
        with compiled_java(folder) as classes:
            loader_check(report, folder, classes)
            model_checks(report, folder, classes, source, x, expected, rtol)
    except Refused as error:
        report.add(Check("the folder's Java compiles", FAIL, NAMES, reason=str(error)))


def loader_check(report: Report, folder: Folder, classes: str) -> None:
    """``<package>.<C>Check MANIFEST``: every tensor's SHA-256 and sum as Java reads it."""
    try:
        wrong = wrong_sums(folder, classes)
    except NotImplementedError as reason:
        report.skip(LOADER, str(reason), NAMES)
        return
    except Refused as error:
        report.add(Check(LOADER, FAIL, NAMES, reason=str(error)))
        return
    report.add(Check(LOADER, FAIL if wrong else PASS, NAMES,
                     reason=f"sums differ: {'; '.join(wrong[:10])}" if wrong else ""))


def model_checks(report: Report, folder: Folder, classes: str, source: Model, x: np.ndarray | None,
                 expected: np.ndarray | None, rtol: float) -> None:
    """The model class on the recorded input against the recorded output, or on random input (it runs)."""
    if not folder.has_model():
        report.skip("whole model", "the project has no model class (convert with --emit-forward for one)",
                    WHOLE_MODEL)
        return
    if x is None or expected is None:
        report.skip(WHOLE, "no recorded output: give --input X.npy and --expected Y.npy", WHOLE_MODEL)
        try:
            random_run(folder, classes, source)
            report.add(Check(RUNS, PASS, RUNTIME))
        except NotImplementedError as reason:
            report.skip(RUNS, str(reason), RUNTIME)
        except Refused as error:
            report.add(Check(RUNS, FAIL, RUNTIME, reason=str(error)))
        return
    try:
        got = java_forward(folder, classes, x)
    except Refused as error:
        report.add(Check(WHOLE, FAIL, WHOLE_MODEL, reason=str(error)))
        return
    check = report.add(compare(WHOLE, got, np.asarray(expected).reshape(len(expected), -1), report.atol, rtol,
                               check=WHOLE_MODEL))
    if check.status == FAIL:
        check.likely_cause = first_failed_layer(report)
