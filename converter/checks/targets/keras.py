"""The Keras target's validator (``--to keras``: legacy ``.h5`` for ``load_weights``, Keras 3 ``.weights.h5``),
every check run in Keras 3 on the file as Keras itself loads it (never weightport's readers):

* structure: the file's groups matched to the source's weighted layers as Keras's loaders match them;
* layer by layer: each weighted layer as the Keras 3 layer it is, holding the file's arrays
  (:class:`weightport.formats.keras.target_check.KerasSide`), against the source framework's oracle;
* whole model: the source's architecture rebuilt in Keras 3, every variable zeroed, the converted file
  loaded with ``Model.load_weights`` and run on the recorded input (or, without one, against the source
  run by its own framework on seeded random input: :mod:`weightport.checks.source_reference`).
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
from weightport.formats.keras.layers import stacked_as_keras_layers
from weightport.formats.keras.target_check import (KerasSide, activation_notes, load_converted, load_weights,
                                                   rebuilt_source, run_model)

STRUCTURE = "converted file holds every weighted source layer's weights, as Keras loads them"
LOAD = "Keras load_weights of the converted file into the rebuilt source model"


def validate_keras(source: Model, request: Any, read: Callable[[str], Model]) -> Report:
    """The Keras target's validator (the registry names it): structure, every layer in Keras 3, and the
    whole model rebuilt in Keras 3 (``read``, weightport's reader, is never used on the converted file).  A
    stacked torch RNN is checked as the Keras layers it was written as, one per torch layer."""
    source = stacked_as_keras_layers(source)
    report = request.report(source, "keras")
    x, expected = request.recorded(source, report)  # without recorded arrays: the source run by its framework
    try:
        import keras  # noqa: F401  (the runtime every check here runs in)
    except ImportError:
        report.skip("keras output in Keras", "keras is not installed (pip install 'weightport[tensorflow]')")
        return report
    loaded = load_converted(source, request.converted_path)
    report.add(names_check(STRUCTURE, loaded.problems))
    report.notes.extend(loaded.notes + activation_notes(source))
    if loaded.problems and not loaded.arrays:
        return report
    side = KerasSide(source, loaded.arrays, loaded.unavailable, loaded.convolving)
    report.checks.extend(check_layers(source, side, report.atol, report.rtol))
    whole_model(report, source, request.converted_path, x, expected, loaded.convolving)
    return report


def whole_model(report: Report, source: Model, path: str, x: np.ndarray | None, expected: np.ndarray | None,
                convolving: bool) -> None:
    """The source's architecture rebuilt in Keras 3, the converted file loaded by ``load_weights``, run."""
    reference = report.reference or Reference()
    name = reference.label
    if x is None or expected is None:
        report.skip(name, without_reference(reference.reason))
        return
    try:
        model = rebuilt_source(source, convolving)
    except NotImplementedError as reason:
        report.skip(name, str(reason))
        return
    try:
        load_weights(model, path)
    except Refused as error:
        report.add(Check(LOAD, FAIL, NAMES, reason=str(error)))
        return
    whole = report.add(compare(name, run_model(model, x), expected, report.atol, report.rtol, check=WHOLE_MODEL))
    if whole.status == FAIL:
        whole.likely_cause = first_failed_layer(report)
