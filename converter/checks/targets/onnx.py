"""The ONNX target's validator (``--to onnx``: a traced graph, or a ``--template`` filled in), every check
run by onnxruntime on the converted file itself (never weightport's reader):

* structure: ``onnx.checker``, and each weighted source layer's node with constant weights of the source's
  shapes;
* node by node: each layer's node(s) cut out of the graph with their constants and run alone
  (:class:`weightport.formats.onnx.target_check.OnnxSide`), against the source framework's oracle;
* whole graph: on the recorded input, or (without one) against the source run by its own framework on
  seeded random input: the shared reference of every target (:mod:`weightport.checks.source_reference`:
  onnxruntime, Keras 3, a state dict's ``--arch`` module, OpenCV for Caffe/Torch7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from weightport.checks.layer_check import check_layers
from weightport.checks.report import FAIL, NAMES, WHOLE_MODEL, Check, Report, compare
from weightport.checks.source_reference import Reference
from weightport.checks.targets.common import first_failed_layer, names_check, without_reference
from weightport.core.model import Model
from weightport.core.oracle import Refused
from weightport.formats.keras.target_check import said
from weightport.formats.onnx.target_check import Graph, OnnxSide, match, onnx_modules, run_graph

STRUCTURE = "converted graph holds every weighted source layer's node and weights"


def validate_onnx(source: Model, request: Any, read: Callable[[str], Model]) -> Report:
    """The ONNX target's validator (the registry names it): structure, every layer's node cut out and run
    by onnxruntime, and the whole graph (``read``, weightport's reader, is never used on the converted file)."""
    report = request.report(source, "onnx")
    x, expected = request.recorded(source, report)  # without recorded arrays: the source run by its framework
    try:
        onnx_modules()
    except ImportError:
        report.skip("onnx output in onnxruntime", "onnx and onnxruntime are not installed (pip install "
                                                 "'weightport[onnx]')")
        return report
    try:
        graph = Graph(request.converted_path)
    except Exception as error:  # onnx refuses the file in many ways: a failure of the converted file
        report.add(Check(STRUCTURE, FAIL, NAMES, reason=f"onnx cannot load it ({said(error)})"))
        return report
    matched = match(graph, source)
    report.add(names_check(STRUCTURE, matched.problems))
    side = OnnxSide(graph, source, matched.bound, matched.unavailable)
    report.checks.extend(check_layers(source, side, report.atol, report.rtol))
    whole_graph(report, source, request.converted_path, x, expected)
    return report


def whole_graph(report: Report, source: Model, path: str, x: np.ndarray | None, expected: np.ndarray | None) -> None:
    """The converted graph in onnxruntime on the recorded input, or on the seeded random input the source's
    own framework ran (``report.reference``; a skip with its reason when it could not run)."""
    reference = report.reference or Reference()
    name = reference.label
    if x is None or expected is None:
        report.skip(name, without_reference(reference.reason))
        return
    try:
        got = run_graph(path, source, x, expected.shape)
    except NotImplementedError as reason:
        report.skip(name, str(reason))
        return
    except Refused as error:
        report.add(Check(name, FAIL, WHOLE_MODEL, reason=str(error)))
        return
    whole = report.add(compare(name, got, expected, report.atol, report.rtol, check=WHOLE_MODEL))
    if whole.status == FAIL:
        whole.likely_cause = first_failed_layer(report)
