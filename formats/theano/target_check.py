"""Checking a ``theano`` output (a pickle of arrays and its ``<stem>.spec.json``) the way a Theano or
Lasagne program uses it, never through weightport's writer or layout code.

The pickle is untrusted, so its arrays are read by the reader's allowlist unpickler
(:func:`weightport.formats.theano.reader.read_arrays`: no code runs; reading arrays is not layout code)
and paired with the spec's ``arrays`` list by position.  Each weighted layer is then computed with
Lasagne's formulas by :class:`weightport.formats.numpy.target_check.DeclaredSide`, as the spec declares
it: a convolution is ``scipy.signal.convolve`` of ``W`` (the spec's ``semantics``: ``convolution`` for
Theano's ``conv2d(filter_flip=True)``, ``correlation`` for ``filter_flip=False``) plus ``b``; a batch norm
``(x - mean) * gamma * inv_std + beta``; a dense layer ``x @ W + b`` with ``W`` as ``(num_inputs,
num_units)``, fed a map flattened C, H, W as Lasagne does.  Theano itself is not run here, so there is no
whole-model check: a real Theano run of a written pickle is in fixtures/theano_target.

:func:`read_output` is the runtime's half of the check; the validator that runs it is the check layer's
(:mod:`weightport.checks.targets.theano`).
"""

from __future__ import annotations

import os

import numpy as np

from weightport.core.describe import parse_json
from weightport.formats.numpy.target_check import Declared
from weightport.formats.theano.reader import default_spec_for, read_arrays

INV_STD = "inv_std"  # Lasagne's BatchNormLayer stores 1/sqrt(var + epsilon) where the source has running_var


def read_output(path: str) -> tuple[dict[tuple[str, str], Declared], list[str]]:
    """The pickle's arrays by ``(layer, param)`` with the spec's layouts and semantics (a Lasagne ``inv_std``
    under ``inv_std``), and what does not agree with the spec; ValueError when the pair cannot be read."""
    spec_path = default_spec_for(path)
    if spec_path is None:
        raise ValueError("no <stem>.spec.json beside it")
    with open(spec_path, "rb") as handle:
        spec = parse_json(handle.read(), spec_path, "the theano spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("arrays"), list) or not isinstance(spec.get("layers"),
                                                                                                 list):
        raise ValueError(f"{os.path.basename(spec_path)} is not a weightport theano spec (arrays, layers)")
    arrays = [array for _, array in read_arrays(path)]
    problems = []
    if len(arrays) != len(spec["arrays"]):
        problems.append(f"the pickle holds {len(arrays)} arrays, the spec lists {len(spec['arrays'])}")
    position = {name: k for k, name in enumerate(spec["arrays"]) if isinstance(name, str)}
    found: dict[tuple[str, str], Declared] = {}
    for entry in spec["layers"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
            continue
        for lasagne, param in entry["params"].items():
            key = f"{entry.get('name')}.{lasagne}"
            if position.get(key, len(arrays)) >= len(arrays):
                problems.append(f"the spec names {key} but the pickle holds no array for it")
                continue
            array = np.asarray(arrays[position[key]])
            if param == "weight" and isinstance(entry.get("semantics"), str):
                item = Declared(array, str(entry.get("layout", "")), entry["semantics"])
            elif param == "weight" and entry.get("kind") in ("dense", "prelu"):
                item = Declared(array, str(entry.get("layout", "i o" if entry.get("kind") == "dense" else "c")))
            else:
                item = Declared(array, "o" * array.ndim)
            found[(str(entry.get("name")), str(param))] = item
    return found, problems


def source_param(param: str) -> str:
    """A spec's parameter as the source names it (Lasagne's ``inv_std`` stands where the source has
    ``running_var``)."""
    return "running_var" if param == INV_STD else param
