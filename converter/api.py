"""The Python API: load a model, save it for a target, or convert in one call; validate a conversion,
detect a file's kernel semantics.  Each function's docstring ends with an example that runs from a clone
of the repository (tests/test_api_examples.py runs them).

Every error is a :class:`weightport.core.errors.WeightportError`; its message names options as this
API's keyword arguments (``assume_backend="theano"``), where the command line names its flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from weightport.core.atomic import check_can_write, staging_folder
from weightport.core.budget import require_regular_file
from weightport.core.blocks import conversion_buffers
from weightport.core.errors import UsageError, ValidationFailed, WeightportError
from weightport.core.layout import SEMANTICS
from weightport.core.model import Model
from weightport.core.options import ReadOptions, WriteOptions
from weightport.core.tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from weightport.formats.theano.spec_path import default_spec_for
from weightport.formats import (FormatEntry, check_target_options, entry, extension_of, reader_for, require_architecture,
                                target, writer_for)


@dataclass
class ConversionResult:
    """What :func:`convert` and :func:`save` did: the files written and the warnings to show."""

    outputs: list[str]
    warnings: list[str] = field(default_factory=list)
    report: object | None = None  # the weightport.checks.validate.Report when the conversion was validated


def load(path: str, *, assume_backend: str | None = None, source_semantics: str | None = None,
         spec: str | None = None, format: str | None = None, key: str | None = None, arch: str | None = None,
         input_shape: tuple[int, ...] | None = None, strict: bool = False,
         layer_kinds: dict[str, str] | None = None, keep_unknown: bool = False) -> Model:
    """Read ``path`` (format detected from its content) into the canonical model: PyTorch/ONNX layouts,
    correlation kernels, every tensor with its provenance.

    ``assume_backend`` (``"theano"`` or ``"tensorflow"``): the Keras backend of a file that records none
    (Keras 1); ``source_semantics`` (``"convolution"`` or ``"correlation"``): force the semantics of the
    stored kernels; ``spec``: the JSON naming the arrays of an architecture-less pickle; ``format``: a
    registry name (``weightport formats``) instead of detection.  PyTorch files: ``key`` names the
    checkpoint entry holding the state dict; ``arch`` (``module.py:Class`` or ``module.py:factory``)
    imports your own module to give the state dict its layer kinds, traced on an input of ``input_shape``
    (see docs/formats/torch.md).  ``input_shape``: the model's input shape without the batch axis, in the
    source's layout, where the file does not record it (a weights-only Keras file, a traced ``arch``).
    Keras files: ``layer_kinds`` (layer name -> Keras class) for a weights-only file whose layers cannot be
    told apart; ``keep_unknown`` copies custom layers' tensors unchanged (see docs/formats/keras.md).  ``strict``: refuse, instead of keeping as stored with a warning, the
    tensors of a source op weightport does not understand (see docs/real-exporters.md).

    Example:

        >>> from weightport import load
        >>> model = load("fixtures/keras3/cnn_flatten_dense.h5")
        >>> [layer.name for layer in model.weighted_layers()]
        ['conv_a', 'bn', 'conv_same_s2', 'dense']
        >>> model.layer("conv_a").tensors["weight"].shape  # (out, in, rows, cols), as PyTorch holds it
        (4, 3, 3, 2)
        >>> load("fixtures/keras_theano/k1_conv2d_th.h5")  # Keras 1 recorded no backend
        Traceback (most recent call last):
        weightport.core.errors.AmbiguousSemanticsError: fixtures/keras_theano/k1_conv2d_th.h5: the file records no Keras backend, ... Pass assume_backend="theano" or assume_backend="tensorflow" ...
        >>> load("fixtures/keras_theano/k1_conv2d_th.h5", assume_backend="theano").source.backend
        'theano'
    """
    if source_semantics is not None and source_semantics not in SEMANTICS[:2]:
        raise UsageError(f"unknown semantics {source_semantics!r}", fix="Use convolution or correlation")
    if assume_backend is not None and assume_backend not in ("theano", "tensorflow"):
        raise UsageError(f"unknown backend {assume_backend!r}", fix="Use {opt:assume_backend=theano} or {opt:assume_backend=tensorflow}")
    if not os.path.exists(path):
        raise UsageError("no such file", path=path, fix="Check the path")
    require_regular_file(path)  # a FIFO or device could block or never end
    options = ReadOptions(assume_backend=assume_backend, source_semantics=source_semantics, spec=spec, key=key,
                          arch=arch, input_shape=tuple(input_shape) if input_shape else None, strict=strict,
                          layer_kinds=dict(layer_kinds or {}), keep_unknown=keep_unknown)
    chosen = entry(format) if format else reader_for(path)
    if input_shape is not None and arch is None and chosen.target == "torch":
        raise UsageError("a state dict has no input: {opt:input_shape} traces the module given by {opt:arch}",
                         path=path, fix="Give {opt:arch=model.py:Class} too")
    try:
        model = chosen.reader_module().read(path, options)
        if arch is not None:  # the user's own module gives a state dict its layers
            from weightport.formats.torch.arch import apply_arch
            apply_arch(model, options, path)
        return model
    except WeightportError as error:
        raise error.with_path(path)


def save(model: Model, path: str, *, to: str | None = None, force: bool = False,
         rename: dict[str, str] | None = None, strict: bool = False, **write_options: object) -> ConversionResult:
    """Write ``model`` to ``path`` for target ``to`` (default: from the extension).

    Options that ``to`` does not take are refused, never ignored.  The result's warnings are the
    reader's (kept on ``model``) followed by the writer's, each once.  A ``rename`` entry that matches
    no layer or key is a warning, or with ``strict=True`` a :class:`~weightport.core.errors.UsageError`.

    Example:

        >>> from weightport import load, save
        >>> model = load("fixtures/keras3/cnn_flatten_dense.h5")
        >>> result = save(model, "cnn.safetensors", to="torch", rename={"conv_a": "features.0"}, force=True)
        >>> result.outputs
        ['cnn.safetensors']
        >>> [warning.split(" (")[0] for warning in result.warnings]
        ['asymmetric padding']
    """
    writer, options = writer_and_options(path, to, force, rename, write_options)
    from weightport.core.rename_check import check_renames  # here: `inspect` and `load` never plan a target
    renames = check_renames(model, options.rename, options.rename_patterns, strict)  # strict: refuse, not warn
    require_architecture(model, writer.target or "", options)
    write = writer.writer_module().write
    if writer.target == "onnx" and not options.template and getattr(model, "arch_module", None) is not None:
        from weightport.formats.torch.arch_onnx import write  # --arch: the user's own module, exported
    with conversion_buffers():  # this call's own block buffers, whatever other threads convert
        warnings = write(model, path, options)
    return ConversionResult([path], list(dict.fromkeys(list(model.warnings) + renames + list(warnings or []))))


def writer_and_options(path: str, to: str | None, force: bool, rename: dict[str, str] | None,
                       write_options: dict[str, object]) -> tuple[FormatEntry, WriteOptions]:
    """The writer for ``path``/``to`` and its options, target-specific options checked against the target."""
    writer = writer_for(path, to)
    options = WriteOptions(force=force, rename=dict(rename or {}), **write_options)  # type: ignore[arg-type]
    check_target_options(writer.target or "", options)
    return writer, options


def convert(src: str, dst: str, *, to: str | None = None, force: bool = False,
            assume_backend: str | None = None, source_semantics: str | None = None, spec: str | None = None,
            rename: dict[str, str] | None = None, validate: bool = False, input: str | None = None,
            expected: str | None = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            allow_incomplete: bool = False, fail_on_nonfinite: bool = False, strict: bool = False,
            key: str | None = None, arch: str | None = None, input_shape: tuple[int, ...] | None = None,
            seed: int = 0, samples: int = 2, layer_kinds: dict[str, str] | None = None,
            keep_unknown: bool = False,
            **write_options: object) -> ConversionResult:
    """Read ``src`` and write it to ``dst`` for target ``to``; returns the files and warnings.

    With ``validate=True`` the output is written to a staging folder beside ``dst``, checked in the
    target's own runtime (see :func:`validate_conversion`), and moved into place only when the report
    passes (or is incomplete and ``allow_incomplete`` is given); otherwise nothing is written and
    :class:`weightport.core.errors.ValidationFailed` is raised, carrying the report (exit 1 for a
    failure, 3 for an incomplete check).  ``strict=True`` refuses a ``rename`` entry that matches
    nothing (see :func:`save`).

    Example:

        >>> from weightport import convert
        >>> result = convert("fixtures/keras3/cnn_flatten_dense.h5", "cnn.safetensors", force=True, validate=True,
        ...                  input="fixtures/keras3/cnn_flatten_dense.input.npy",
        ...                  expected="fixtures/keras3/cnn_flatten_dense.output.npy")
        >>> result.outputs, result.report.status
        (['cnn.safetensors'], 'pass')
    """
    writer, _ = writer_and_options(dst, to, force, rename, write_options)  # a bad target or option: before reading
    check_can_write(dst, force)
    refuse_writing_over_inputs(src, spec, dst, writer)
    model = load(src, assume_backend=assume_backend, source_semantics=source_semantics, spec=spec, key=key, arch=arch,
                 input_shape=input_shape, strict=strict,
                 layer_kinds=layer_kinds, keep_unknown=keep_unknown)
    if fail_on_nonfinite:
        from weightport.core.nonfinite import refuse_nonfinite
        refuse_nonfinite(model)
    if not validate:
        return save(model, dst, to=to, force=force, rename=rename, strict=strict, **write_options)
    staging = staging_folder(dst)
    try:
        staged = os.path.join(staging, os.path.basename(dst))
        result = save(model, staged, to=to, force=True, rename=rename, strict=strict, **write_options)
        report = validate_conversion(model, staged, input, expected, atol, rtol, allow_incomplete, shown_path=dst,
                                     seed=seed, samples=samples)
        result.report = report
        if not report.accepted:
            reason = "it failed validation" if report.status == "fail" else \
                "some layers went unchecked ({opt:allow_incomplete=True} accepts that)"
            error = ValidationFailed(f"the conversion was not written because {reason}", path=src,
                                     fix="See the report above")
            error.report = report  # type: ignore[attr-defined]
            error.exit_code = report.exit_code  # type: ignore[misc]
            raise error
        move_into_place(writer, staged, dst, force)
        result.outputs = [dst]
        return result
    finally:
        import shutil  # here: `inspect` and `load` start without it
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(writer: FormatEntry, staged: str, dst: str, force: bool) -> None:
    """Move a validated output from staging to ``dst``, with the files its writer puts beside it (a theano
    spec, an npz sidecar, an ONNX external-data file): those first, the output itself last (a folder by its
    writer's own ``move_into_place``, which replaces only weightport's own folders)."""
    module = writer.writer_module()
    companions = getattr(module, "companion_outputs", lambda path: [])
    pairs = [(beside, final) for beside, final in zip(companions(staged), companions(dst)) if os.path.exists(beside)]
    for _, final in pairs + [(staged, dst)]:
        check_can_write(final, force)
    for beside, final in pairs:
        os.replace(beside, final)
    getattr(module, "move_into_place", lambda complete, path, force: os.replace(complete, path))(staged, dst, force)


def validate(src: str | Model, converted: str, *, input: str | None = None, expected: str | None = None,
             atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, allow_incomplete: bool = False,
             assume_backend: str | None = None, source_semantics: str | None = None, spec: str | None = None,
             key: str | None = None, arch: str | None = None, input_shape: tuple[int, ...] | None = None,
             seed: int = 0, samples: int = 2, layer_kinds: dict[str, str] | None = None,
             keep_unknown: bool = False, strict: bool = False):
    """Check the converted file ``converted`` against its source ``src`` (a path or a loaded model);
    a :class:`weightport.checks.report.Report` (what ``weightport validate`` prints): its ``status``
    is ``pass``, ``fail`` or ``incomplete`` and its ``exit_code`` 0, 1 or 3.  Without ``input`` and
    ``expected``, the whole model is checked against the source run by its own framework on ``samples``
    examples of seeded (``seed``) random input, where it can be (weightport.checks.source_reference).

    Example:

        >>> from weightport import convert, validate
        >>> _ = convert("fixtures/keras3/cnn_flatten_dense.h5", "cnn.pt", force=True)
        >>> report = validate("fixtures/keras3/cnn_flatten_dense.h5", "cnn.pt",
        ...                   input="fixtures/keras3/cnn_flatten_dense.input.npy",
        ...                   expected="fixtures/keras3/cnn_flatten_dense.output.npy")
        >>> report.status, report.exit_code
        ('pass', 0)
    """
    source = src if isinstance(src, Model) else load(src, assume_backend=assume_backend,
                                                      source_semantics=source_semantics, spec=spec, key=key,
                                                      arch=arch, input_shape=input_shape,
                                                      layer_kinds=layer_kinds, keep_unknown=keep_unknown,
                                                      strict=strict)
    return validate_conversion(source, converted, input, expected, atol, rtol, allow_incomplete, seed=seed,
                               samples=samples)


def refuse_writing_over_inputs(src: str, spec: str | None, dst: str, writer: FormatEntry) -> None:
    """Never let an output (or a file written beside it, or a folder output holding it) be an input."""
    inputs = [path for path in (src, spec, default_spec_for(src)) if path]
    companions = getattr(writer.writer_module(), "companion_outputs", lambda path: [])
    for output in [dst] + list(companions(dst)):
        for source in inputs:
            if same_path(output, source) or ("" in writer.extensions and inside(source, output)):
                raise UsageError(f"the output {output!r} would overwrite an input of this conversion", path=source,
                                 fix="Choose another output name")


def same_path(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def detect(src: str, input: str, expected: str, *, atol: float = 1e-4, rtol: float = 1e-4,
           spec: str | None = None):
    """Which kernel semantics of ``src`` reproduce a recorded input/output pair; a
    :class:`weightport.checks.detect.Detection` (needs torch).

    Example (a Keras 1 file that records no backend; its recorded output says Theano's convolution):

        >>> from weightport import detect
        >>> detect("fixtures/keras_theano/k1_conv2d_th.h5", "fixtures/keras_theano/k1_conv2d_th.input.npy",
        ...        "fixtures/keras_theano/k1_conv2d_th.output.npy").source_semantics
        'convolution'
    """
    from weightport.checks.detect import detect as detect_semantics
    return detect_semantics(src, lambda semantics: load(src, source_semantics=semantics, spec=spec), input, expected,
                            atol, rtol)


def validate_conversion(source: Model, converted_path: str, input: str | None = None, expected: str | None = None,
                        atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, allow_incomplete: bool = False,
                        shown_path: str | None = None, seed: int = 0, samples: int = 2):
    """Check converted weights against their source in the target's own runtime; a
    :class:`weightport.checks.report.Report` (pass, fail or incomplete, see its ``status``)."""
    from weightport.checks.targets import run_validator
    from weightport.checks.validate import Request, not_checked_yet
    if not os.path.exists(converted_path):
        raise UsageError("no such file or folder", path=converted_path, fix="Check the path")
    request = Request(converted_path, input, expected, atol, rtol, allow_incomplete, shown_path, seed, samples)
    chosen = target(target_of(converted_path))
    if not chosen.validator:
        return not_checked_yet(source, request, load, chosen.name)
    return run_validator(chosen.validator, source, request, load)


def target_of(path: str) -> str:
    """Which target wrote ``path``: a folder by its manifest, a pickle by its spec, an npz by its sidecar."""
    if os.path.isdir(path):
        return "raw" if os.path.exists(os.path.join(path, "manifest.json")) else "java"
    from weightport.formats.numpy.npz import companion_outputs as npz_sidecars
    from weightport.formats.theano.writer import companion_outputs as theano_specs
    if extension_of(path) == ".npz" and os.path.exists(npz_sidecars(path)[0]):
        return "npz"
    if extension_of(path) in (".pkl", ".pickle") and os.path.exists(theano_specs(path)[0]):
        return "theano"
    return reader_for(path).target or "torch"
