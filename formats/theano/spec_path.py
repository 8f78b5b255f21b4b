"""Where an architecture-less pickle's spec is found when none is given: ``NAME.spec.json`` beside the file.

A module of its own so that every conversion can check its output never overwrites that spec
(:func:`weightport.api.refuse_writing_over_inputs`) without importing the pickle reader.
"""

from __future__ import annotations

import os


def default_spec_for(path: str) -> str | None:
    """``NAME.spec.json`` beside ``NAME.<anything>`` is used when no --spec is given."""
    folder, base = os.path.split(path)
    stem = base.split(".")[0]
    candidate = os.path.join(folder, f"{stem}.spec.json")
    return candidate if os.path.exists(candidate) else None
