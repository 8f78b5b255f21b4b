"""Validation: prove converted weights reproduce the source before they ship.

Checks, in order (see :mod:`weightport.checks.report` for pass, fail, skip and incomplete):

* names: the converted file holds every tensor of the source, with the source's shapes;
* layer: each weighted layer run by the source framework's oracle on the *stored* arrays and by
  PyTorch on the *converted* tensors, on seeded random input (:mod:`weightport.checks.layer_check`);
* whole-model: the source's architecture as a real ``torch.nn`` module holding the *converted file*
  (``load_state_dict(strict=True)``), run on the user's recorded input and compared with the output
  the source framework recorded.  The input is checked against the model's input shape first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightport.checks.layer_check import TorchSide, check_layers
from weightport.checks.source_reference import DEFAULT_SAMPLES, DEFAULT_SEED, Reference, self_reference
from weightport.checks.report import (DEFAULT_ATOL, DEFAULT_RTOL, FAIL, LAYER, NAMES, PASS, SKIP, WHOLE_MODEL, Check,
                                      Report, compare, load_array)
from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.model import Layer, Model

WHOLE = "whole model vs recorded output"


def not_checked_yet(source: Model, request: Request, read: Callable[[str], Model], target: str) -> Report:
    """A target with no runtime check here: every layer unchecked, the report INCOMPLETE (never a pass)."""
    report = request.report(source, target)
    request.recorded(source)
    report.skip(f"{target} output in its own runtime", f"weightport cannot run {target} outputs yet")
    return report


def new_report(source: Model, converted_path: str, atol: float, rtol: float, allow_incomplete: bool,
               target: str) -> Report:
    """An empty report that must cover every weighted layer of ``source``."""
    return Report(source.source.path, converted_path, atol, rtol,
                  weighted_layers=[(layer.name, layer.kind) for layer in source.layers if layer.tensors],
                  allow_incomplete=allow_incomplete, target=target)


def names_check(source: Model, converted: Model) -> Check:
    """Every source tensor is in the converted file under its key, with its shape (numpy only)."""
    expected_keys = {key: tuple(t.shape) for key, _, t in source.state_keys()}
    found_keys = {key: tuple(t.shape) for key, _, t in converted.state_keys()}
    differences = ([f"missing {k}" for k in expected_keys if k not in found_keys]
                   + [f"unexpected {k}" for k in found_keys if k not in expected_keys and
                      not k.endswith("num_batches_tracked")]
                   + [f"{k} has shape {found_keys[k]}, source {s}" for k, s in expected_keys.items()
                      if k in found_keys and found_keys[k] != s])
    return Check("converted tensors match the source's names and shapes", FAIL if differences else PASS, NAMES,
                 reason="; ".join(differences[:20]) + (f"; and {len(differences) - 20} more"
                                                       if len(differences) > 20 else ""))


def converted_arrays(source: Model, converted: Model) -> dict[str, dict[str, np.ndarray]]:
    """The converted file's tensors per source layer, as stored (the torch target's canonical layout)."""
    found = {key: tensor for key, _, tensor in converted.state_keys()}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for key, _, tensor in source.state_keys():
        if key in found:
            layer = key[: -len(tensor.name) - 1]
            arrays.setdefault(layer, {})[tensor.name] = np.array(found[key].load(), copy=True)
    return arrays


MAP_KINDS = ("conv", "depthwise", "separable", "conv_transpose", "pool", "global_pool")


def expected_input_shape(model: Model, first: Layer | None = None) -> tuple[tuple[int | None, ...], int] | None:
    """The input batch shape the source takes at its input layer ``first`` (the model's first layer when not
    given), in the source's own layout (``None`` for free axes, and for the batch unless the graph fixes it:
    ``attrs["fixed_batch"]``), and its batch axis.  Shapes in the canonical model are channels-first; an input
    with ``attrs["batch_axis"]`` (an ONNX RNN's initial state, (directions, batch, hidden)) has its batch there."""
    first = first or (model.layers[0] if model.layers else None)
    if first is None or first.kind != "input" or first.output_shape is None:
        return None
    sample = tuple(int(n) if n is not None and int(n) > 0 else None for n in first.output_shape)
    batch_axis, batch = first.attrs.get("batch_axis"), first.attrs.get("fixed_batch")
    if batch_axis is not None:
        return sample[:batch_axis] + (batch,) + sample[batch_axis:], batch_axis
    consumers = [layer for layer in model.layers if first.name in layer.inputs]
    if model.source.format == "onnx" and len(sample) == 2 and any(c.kind in ("lstm", "gru") for c in consumers):
        return (sample[0], batch, sample[1]), 1  # an ONNX LSTM/GRU input is (seq, batch, features)
    if (model.source.details.get("data_format") == "channels_last" and len(sample) >= 2
            and any(layer.kind in MAP_KINDS for layer in model.layers)):
        sample = sample[1:] + sample[:1]
    return (batch,) + sample, 0


def check_input(model: Model, x: np.ndarray, path: str) -> None:
    """Refuse an input batch that does not fit the source's input (wrong rank, or channels in the wrong place)."""
    wanted = expected_input_shape(model)
    if wanted is None:
        return
    shape, batch_axis = wanted
    if fits(x.shape, shape):
        return
    layout = model.source.details.get("data_format")
    shown = shown_shape(wanted)
    hint = f" ({layout.replace('_', '-')})" if layout and len(shape) >= 3 else ""
    raise UsageError(f"the input has shape {tuple(x.shape)}, but the source model takes {shown}{hint}", path=path,
                     fix="Give the input in the source framework's own layout, as it was recorded")


def recorded_inputs(source: Model, path: str) -> tuple[np.ndarray, ...]:
    """One recorded array per input of ``source`` from an ``.npz`` naming each by the source's input name (or
    ``input__NAME``, as fixtures/real's pairs do), each checked against its input's shape."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name[len("input__"):] if name.startswith("input__") else name: stored[name]
                      for name in stored.files}
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the input arrays ({error})", path=path,
                         fix="Give a .npz written by numpy.savez, one array per model input") from None
    names = source.source.details.get("inputs") or {layer.name: layer.name for layer in source.input_layers()}
    missing = [name for name in names if name not in arrays]
    if missing:
        raise UsageError(f"the input arrays lack {', '.join(repr(m) for m in missing)} (found "
                         f"{', '.join(repr(a) for a in arrays) or 'none'})", path=path,
                         fix="Save one array per model input, named by the input")
    layers = {layer.name: layer for layer in source.input_layers()}
    for name, layer in names.items():
        wanted = expected_input_shape(source, layers.get(layer))
        if wanted is not None and not fits(arrays[name].shape, wanted[0]):
            raise UsageError(f"input {name!r} has shape {tuple(arrays[name].shape)}, but the source model takes "
                             f"{shown_shape(wanted)}", path=path, fix="Give each input as the source takes it")
    return tuple(arrays[name] for name in names)


def fits(shape: tuple[int, ...], wanted: tuple[int | None, ...]) -> bool:
    return len(shape) == len(wanted) and all(n is None or n == got for n, got in zip(wanted, shape))


def shown_shape(wanted: tuple[tuple[int | None, ...], int]) -> str:
    shape, batch_axis = wanted
    return "(" + ", ".join("N" if k == batch_axis and n is None else ("?" if n is None else str(n))
                           for k, n in enumerate(shape)) + ")"


@dataclass(frozen=True)
class Request:
    """What a validation is asked: the converted file, the recorded pair, the tolerance, and the name to show."""

    converted_path: str
    input_path: str | None = None
    expected_path: str | None = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    allow_incomplete: bool = False
    shown_path: str | None = None  # the final output's name when the file checked is a staging copy
    seed: int = DEFAULT_SEED  # of the random input the source's own framework runs without recorded arrays
    samples: int = DEFAULT_SAMPLES

    def recorded(self, source: Model, report: Report | None = None) -> tuple[Any, np.ndarray | None]:
        """The recorded input and output, the input checked against the source's input shape first.
        Without them, and given the ``report`` to record it in, the source run by its own framework on
        seeded random input (weightport.checks.source_reference), where it can be.  A model of several
        inputs takes a tuple of arrays, one per input layer (a recorded ``.npz`` names them)."""
        if self.input_path is None or self.expected_path is None:
            if report is None:
                return None, None
            entries = source.input_layers()
            wanted = [expected_input_shape(source, layer) for layer in entries] if len(entries) > 1 \
                else expected_input_shape(source)
            report.reference = self_reference(source, wanted, self.seed, self.samples)
            return report.reference.x, report.reference.expected
        expected = load_array(self.expected_path, "expected output")
        if self.input_path.lower().endswith(".npz"):
            return recorded_inputs(source, self.input_path), expected
        x = load_array(self.input_path, "input")
        check_input(source, x, self.input_path)
        return x, expected

    def report(self, source: Model, target: str) -> Report:
        return new_report(source, self.shown_path or self.converted_path, self.atol, self.rtol,
                          self.allow_incomplete, target)


def validate_torch_file(source: Model, request: Request, read: Callable[[str], Model]) -> Report:
    """The torch target's validator (the registry names it): ``read`` opens the converted file."""
    report = request.report(source, "torch")
    x, expected = request.recorded(source, report)
    return validate_torch(source, read(request.converted_path), x, expected, report)


def validate_torch(source: Model, converted: Model, x: np.ndarray | None, expected: np.ndarray | None,
                   report: Report) -> Report:
    """Check a torch-target file: names, every layer, and the whole model on recorded input."""
    atol, rtol = report.atol, report.rtol
    names = report.add(names_check(source, converted))
    if names.status == FAIL:
        return report
    report.checks.extend(torch_layer_checks(source, converted, atol, rtol))
    whole_model(report, source, converted, x, expected)
    return report


def torch_layer_checks(source: Model, converted: Model, atol: float, rtol: float) -> list[Check]:
    """Each weighted layer: the source framework's oracle against PyTorch holding the converted tensors."""
    try:
        import torch  # noqa: F401  (the converted side of every layer check)
    except ImportError:
        return [Check(f"layer {layer.name} ({layer.source_class or layer.kind})", SKIP, LAYER, layer.name, layer.kind,
                      reason="torch is not installed (pip install 'weightport[torch]')")
                for layer in source.layers if layer.tensors]
    records = converted.has_architecture or converted.source.details.get("written_by_weightport")  # its own graph
    recorded = {layer.name: layer.attrs for layer in converted.layers} if records else {}
    return check_layers(source, TorchSide(converted_arrays(source, converted), recorded), atol, rtol)


def whole_model(report: Report, source: Model, converted: Model, x: np.ndarray | None,
                expected: np.ndarray | None) -> None:
    """The whole-model check in torch on the recorded input, or on the source run by its own framework
    (a skip with its reason when it cannot run)."""
    reference = report.reference or Reference()
    name = reference.label
    if x is None or expected is None:
        report.skip(name, f"no recorded output, and {reference.reason}" if reference.reason else
                    "no recorded output: give --input X.npy and --expected Y.npy")
        return
    try:
        import torch
    except ImportError:
        report.skip(name, "torch is not installed (pip install 'weightport[torch]')")
        return
    from weightport.formats.torch.module import CanonicalModule, canonical_feeds, from_canonical_output
    from weightport.formats.torch.arch import run_user_module, user_module
    if user_module(source) is not None:  # --arch: the user's own module holds the converted tensors
        state = {key: t.load() for key, _, t in converted.state_keys()}
        try:
            got = run_user_module(source, state, x)
        except RuntimeError as error:
            report.add(Check("state_dict keys and shapes match the --arch module", FAIL, NAMES,
                             reason=str(error).splitlines()[0][:300]))
            return
        label = name if reference.runner else f"{WHOLE} (the --arch module)"
        check = report.add(compare(label, got, expected, report.atol, report.rtol, check=WHOLE_MODEL))
        if check.status == FAIL:
            check.likely_cause = arch_divergence(report, source, state, x)
        return
    if not source.has_architecture:
        report.skip(name, "the source carries no architecture (a weights-only file: its weightless layers, their "
                          "order and its shapes are unknown; layer kinds and an input shape given for it do not "
                          "make that graph), so the recorded output was not compared; the layer checks stand")
        return
    # The module is built from the converted file's own architecture when it carries one (a
    # weightport-written file records epsilon, pads, ...), so a wrong attribute there is caught too.
    architecture = converted if converted.has_architecture else source
    try:
        module = CanonicalModule(architecture).eval()
    except UnsupportedError as error:
        report.skip(name, error.problem)
        return
    state = {key: torch.from_numpy(np.array(t.load(), copy=True)) for key, _, t in converted.state_keys()}
    try:
        result = module.load_state_dict(state, strict=False)
        problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    except RuntimeError as error:  # torch reports shape mismatches this way
        problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    if problems:
        report.add(Check("state_dict keys and shapes match the source architecture", FAIL, NAMES,
                         reason="; ".join(problems)))
        return
    feeds = [torch.from_numpy(np.ascontiguousarray(a)) for a in canonical_feeds(x, source)]
    try:
        with torch.no_grad():
            got = module(*feeds).numpy()
    except UnsupportedError as error:  # a layer the module builds but cannot run (found when it runs)
        if not ported_outputs_checked(report, source, module, x, error.problem):
            report.skip(name, error.problem)
        return
    except RuntimeError as error:  # torch refused a size inside the rebuilt graph: a skip naming it, never a crash
        said = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if unknown_shapes(architecture, source):
            report.skip(name, "the graph records no input or layer shapes, and its torch module cannot run the "
                              f"given input ({said})")
        else:
            shapes = ", ".join(str(tuple(feed.shape)) for feed in feeds)
            report.skip(name, f"the torch module rebuilt from the architecture cannot run an input of shape "
                              f"{shapes} ({said}); record a larger input")
        return
    last = getattr(module, "values", {}).get(architecture.layers[-1].name) if architecture.layers else None
    if isinstance(last, tuple):
        report.notes.append(f"the model ends in layer {architecture.layers[-1].name!r} of {len(last)} outputs; "
                            "the recorded output was compared with its first")
    check = report.add(compare(name, from_canonical_output(got, source), expected, report.atol, report.rtol,
                               check=WHOLE_MODEL))
    if check.status == FAIL:
        check.likely_cause = first_divergence(report, source, module, feeds)


def unknown_shapes(architecture: Model, source: Model) -> bool:
    """True when the input could not be checked in full against a recorded input shape (none recorded, or
    free sizes), or a layer records no output shape: a size torch refuses is then the input's or the graph's
    gap, not a wrong weight (the names check compared every tensor's shape)."""
    wanted = expected_input_shape(source)
    return (wanted is None or any(n is None for k, n in enumerate(wanted[0]) if k != wanted[1])
            or any(layer.output_shape is None or None in layer.output_shape for layer in architecture.layers))


def ported_outputs_checked(report: Report, source: Model, module: object, x: np.ndarray, why: str) -> bool:
    """A model whose end is post-processing that is not ported (SSD's PriorBox and DetectionOutput): the outputs
    feeding it (the box offsets and class scores), computed by the module holding the converted file, against
    the same blobs of the source run by its own framework on the same input; the post-processing itself a skip.
    False when there is no such end, or no framework here gives those outputs."""
    from weightport.checks.source_reference import source_outputs
    from weightport.formats.torch.module import ported_outputs
    names = ported_outputs(source)
    values = getattr(module, "values", {})
    if not names or any(n not in values for n in names):
        return False
    try:
        runner, references = source_outputs(source, x, names)
    except (NotImplementedError, ImportError):
        return False
    for layer, reference in zip(names, references):
        ours = values[layer].numpy()
        ours = ours.reshape(reference.shape) if ours.size == reference.size else ours
        report.add(compare(f"output {layer} (before the post-processing) vs {runner} running the source on the same "
                           "input", ours, reference, report.atol, report.rtol, check=WHOLE_MODEL))
    report.skip("post-processing after those outputs", why)
    return True


def failed_layer(report: Report) -> str | None:
    """"first diverging layer NAME (kind): cause" of the first failed layer check, None when none failed."""
    for check in report.checks:
        if check.check == LAYER and check.status == FAIL:
            cause = f": {check.likely_cause}" if check.likely_cause else ""
            return f"first diverging layer {check.layer} ({check.kind}){cause}"
    return None


def arch_divergence(report: Report, source: Model, state: dict, x: np.ndarray) -> str | None:
    """The first layer of the ``--arch`` module whose output departs from the source's: a failed layer check
    names it, else the module's own submodules run with the source's tensors and with the converted ones."""
    from weightport.formats.torch.arch import first_diverging_module
    failed = failed_layer(report)
    if failed is not None:
        return failed
    name = first_diverging_module(source, state, x, lambda ours, theirs: compare(
        "", ours, theirs, report.atol, report.rtol, check=WHOLE_MODEL).status == FAIL)
    if name is None:
        return None
    layer = source.find(name)
    return f"first diverging layer {name} ({layer.kind if layer is not None else 'module'})"


def first_divergence(report: Report, source: Model, converted_module: object, feeds: list[Any]) -> str | None:
    """The first layer whose output departs from the source's: a failed layer check names it with its
    likely cause; otherwise the source's own tensors run in the same torch graph are compared layer by
    layer with the converted file's (an attribute such as epsilon or padding, which no tensor shows)."""
    failed = failed_layer(report)
    if failed is not None:
        return failed
    import torch

    from weightport.formats.torch.module import CanonicalModule, canonical_state_dict
    try:
        reference = CanonicalModule(source).eval()
        reference.load_state_dict(canonical_state_dict(source), strict=False)
        with torch.no_grad():
            reference(*feeds)
    except Exception:  # the source's own graph cannot run here: no finer answer than the whole model
        return None
    ours, theirs = getattr(converted_module, "values", {}), getattr(reference, "values", {})
    for layer in source.layers:
        mine, source_value = ours.get(layer.name), theirs.get(layer.name)
        if isinstance(mine, tuple) and isinstance(source_value, tuple):  # a layer of several outputs: its first
            mine, source_value = mine[0], source_value[0]
        if hasattr(mine, "shape") and hasattr(source_value, "shape") and tuple(mine.shape) == tuple(source_value.shape):
            step = compare(layer.name, mine.numpy(), source_value.numpy(), report.atol, report.rtol)
            if step.status == FAIL:
                return (f"first diverging layer {layer.name} ({layer.kind}): its weights match the source, so an "
                        "attribute differs (epsilon, padding, strides, activation)" if layer.tensors else
                        f"first diverging layer {layer.name} ({layer.kind})")
    return None
