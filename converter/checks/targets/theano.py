"""The theano target's validator (``--to theano``: a pickle of arrays and its ``<stem>.spec.json``): the
arrays through the allowlist reader (no code runs), paired with the spec, and every layer computed with
Lasagne's formulas as the spec declares them (true convolution, ``scipy.signal.convolve``, for
``filter_flip=True``; Lasagne's ``inv_std`` where the source has ``running_var``) against the source
framework's oracle.  Theano itself is not run here: no whole-model check."""

from __future__ import annotations

from typing import Any

from weightport.checks.report import Report
from weightport.checks.targets.common import validate_declared
from weightport.core.model import Model
from weightport.formats.theano.target_check import read_output, source_param


def validate_theano(source: Model, request: Any, read: Any) -> Report:
    """The theano target's validator (the registry names it); ``read``, weightport's reader, is not used."""
    return validate_declared(source, request, "theano", read_output,
                             "Theano is not run here: no runtime runs the whole model", source_param)
