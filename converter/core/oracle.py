"""The contract between the check layer and a framework's *oracle*: the framework's own computation of
one layer, fed the arrays exactly as the source file stores them.

An oracle is a function ``(case: LayerCase, x: np.ndarray) -> np.ndarray`` living in its framework's
folder (``weightport.formats.<framework>.oracle``); ``x`` is the canonical input (channels-first for a
conv, ``(batch, features)`` for a dense, batch-first ``(batch, time, features)`` for an RNN) and so is
the output.  An oracle that cannot run a layer raises ``NotImplementedError`` with the reason; the
check layer (:mod:`weightport.checks.layer_check`) picks the oracle and compares it with PyTorch
running the converted file in the target's runtime, so weightport's layout code is never on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightport.core.model import Layer


@dataclass
class LayerCase:
    """One layer to check: its source tensors as stored, their stored layouts and kernel semantics."""

    layer: Layer
    stored: dict[str, np.ndarray]
    stored_layout: dict[str, str]
    semantics: str
    source_format: str = ""
    source_version: str | None = None  # the framework version that saved the file (activations differ)


class Refused(Exception):
    """A target runtime refused the *converted* output (it does not load, compile or run): a failure of
    the conversion, with the runtime's reason.

    The other half of the contract between the check layer and a framework's target-side code: a piece
    that *cannot check* something (a runtime missing, a layer it has no equivalent for) raises
    ``NotImplementedError`` with the reason, which the check layer reports as a skip; a piece that *checked*
    and found the output unusable raises :class:`Refused`, which the check layer reports as a failure.
    """
