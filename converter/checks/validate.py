"""Validation: prove converted weights reproduce the source before they ship.

Whole-model check for the torch target: the source's architecture (from its
own file) becomes a real ``torch.nn`` module, the *converted file* is loaded
into it with ``load_state_dict(strict=True)``, and its output on the user's
recorded input is compared with the output the source framework recorded.
A report says pass or fail with the largest absolute and relative errors.
"""

from __future__ import annotations

import numpy as np

from weightport.checks.layer_check import check_layers
from weightport.checks.report import Check, Report, compare, load_array
from weightport.core.errors import UnsupportedError
from weightport.core.model import Model


def layer_level(source: Model, state: dict, atol: float, rtol: float, report: Report) -> list[Check]:
    """Per-layer checks of the converted state_dict against the source framework (see weightport.checks.layer_check)."""
    converted: dict[str, dict[str, np.ndarray]] = {}
    for key, _, tensor in source.state_keys():
        layer, param = key[: -len(tensor.name) - 1], tensor.name
        if key in state:
            converted.setdefault(layer, {})[param] = state[key].numpy()
    try:
        return check_layers(source, converted, atol, rtol)
    except ImportError as error:
        report.skipped.append(f"layer-level checks: {error.name} is not installed (pip install 'weightport[all]')")
        return []


def validate_torch(source: Model, converted: Model, input_path: str | None, expected_path: str | None,
                   atol: float = 1e-5, rtol: float = 1e-5) -> Report:
    """Load the converted tensors into a torch module of the source's architecture and compare outputs."""
    report = Report(source.source.path, converted.source.path, atol, rtol)
    try:
        import torch
    except ImportError:
        report.skipped.append("whole-model check in PyTorch: torch is not installed "
                              "(pip install 'weightport[torch]')")
        return report
    from weightport.formats.torch.module import CanonicalModule, from_canonical_output, to_canonical_input
    if not source.has_architecture:
        report.skipped.append("whole-model check: the source carries no architecture")
        return report
    # The module is built from the converted file's own architecture when it carries one (a
    # weightport-written file records epsilon, pads, ...), so a wrong attribute there is caught too.
    architecture = converted if converted.has_architecture else source
    try:
        module = CanonicalModule(architecture).eval()
    except UnsupportedError as error:
        report.skipped.append(f"whole-model check: {error.problem}")
        return report
    expected_keys = {key: tuple(t.shape) for key, _, t in source.state_keys()}
    found_keys = {key: tuple(t.shape) for key, _, t in converted.state_keys()}
    differences = ([f"missing {k}" for k in expected_keys if k not in found_keys]
                   + [f"unexpected {k}" for k in found_keys if k not in expected_keys and
                      not k.endswith("num_batches_tracked")]
                   + [f"{k} has shape {found_keys[k]}, source {s}" for k, s in expected_keys.items()
                      if k in found_keys and found_keys[k] != s])
    report.checks.append(Check("converted tensors match the source's names and shapes", not differences,
                               detail="; ".join(differences)))
    if differences:
        return report
    state = {key: torch.from_numpy(np.array(t.load(), copy=True)) for key, _, t in converted.state_keys()}
    report.checks.extend(layer_level(source, state, atol, rtol, report))
    try:
        result = module.load_state_dict(state, strict=False)
        problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    except RuntimeError as error:  # torch reports shape mismatches this way
        problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    report.checks.append(Check("state_dict keys and shapes match the source architecture", not problems,
                               detail="; ".join(problems)))
    if problems:
        return report
    if input_path is None or expected_path is None:
        report.skipped.append("recorded-output check: give --input X.npy and --expected Y.npy")
        return report
    x = load_array(input_path, "input")
    expected = load_array(expected_path, "expected output")
    with torch.no_grad():
        got = module(torch.from_numpy(to_canonical_input(x, source))).numpy()
    report.checks.append(compare("whole model vs recorded output", from_canonical_output(got, source), expected,
                                 atol, rtol))
    return report
