"""The npz target's validator (``--to npz``, the scipy preset with ``--target-semantics convolution``): the
archive's arrays read with ``allow_pickle=False`` (each ``.npy`` header checked against its member first)
with the sidecar's layouts and semantics, every layer run with scipy's own correlate or convolve as declared
(:class:`weightport.formats.numpy.target_check.DeclaredSide`) against the source framework's oracle."""

from __future__ import annotations

from typing import Any

from weightport.checks.report import Report
from weightport.checks.targets.common import validate_declared
from weightport.core.model import Model
from weightport.formats.numpy.target_check import read_npz


def validate_npz(source: Model, request: Any, read: Any) -> Report:
    """The npz target's validator (the registry names it); ``read``, weightport's reader, is not used."""
    return validate_declared(source, request, "npz", read_npz,
                             "an npz holds arrays only: no runtime here runs the whole model")
