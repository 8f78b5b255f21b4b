"""The ``weightport`` command line.

Exit codes: 0 success, 1 a validation failed, 2 bad input or usage, 3 a validation in which
nothing failed but some layer went unchecked (``--allow-incomplete`` makes that 0).  Errors
print one line (file, problem, fix) on stderr; ``--debug`` adds the traceback.
Only numpy and h5py are imported at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, Sequence

from weightport.cli_keras import add_keras_read_options, keras_read_options
from weightport.core.version import __version__
from weightport.core.tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from weightport.core.errors import BadInputError, UsageError, WeightportError, render_options
from weightport.core.text import printable
from weightport.cli_help import group_convert_options, output_help
from weightport.stdout_output import output_path
from weightport.formats import target_names



class Parser(argparse.ArgumentParser):
    """argparse with usage errors raised as :class:`UsageError` (exit 2, one line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, fix=f"See '{self.prog} --help'")


def say(line: str, file: Any = None) -> None:
    """Print one line for a person: control characters from file contents escaped (weightport.core.text)."""
    print(printable(line), file=file)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="weightport", description=(
        "Port trained weights between frameworks whose 'convolution' means different things "
        "(Keras/TensorFlow/PyTorch/ONNX correlate; Theano and scipy convolve)."))
    parser.add_argument("--version", action="version", version=f"weightport {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    inspect = commands.add_parser("inspect", help="show format, version, backend, layers, tensors, layouts, semantics")
    inspect.add_argument("src", metavar="SRC", help="model or weights file")
    add_read_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument("--no-scan", action="store_true",
                         help="do not read tensor values (skips the NaN/Inf/denormal report)")

    convert = commands.add_parser("convert", help="convert SRC to DST for a target framework")
    convert.add_argument("src", metavar="SRC", help="model or weights file to read")
    convert.add_argument("-o", "--output", required=True, metavar="DST", help=output_help())
    convert.add_argument("--to", choices=target_names(), help="target framework (default: from DST's extension)")
    add_read_options(convert)
    convert.add_argument("--target-semantics", choices=("convolution", "correlation"),
                         help="semantics the target's kernels must have (default: the target framework's own)")
    convert.add_argument("--rename", metavar="FILE",
                         help="JSON object mapping canonical keys or layer names to yours, or a list of "
                              "[regex, replacement] pairs")
    convert.add_argument("--strict-against", metavar="MODULE.py:CLASS",
                         help="check every key and shape against your torch module class (instantiated with no "
                              "arguments) before writing")
    convert.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    convert.add_argument("--max-shard-size", metavar="SIZE", type=shard_size,
                         help="for DST NAME.safetensors.index.json: bytes of tensors per shard, e.g. 5GB, 500MB, "
                              "2GiB (default 5GB)")
    convert.add_argument("--fail-on-nonfinite", action="store_true",
                         help="refuse tensors holding NaN or Inf (by default they are kept bit-exactly and reported)")
    convert.add_argument("--validate", action="store_true",
                         help="check the conversion in the target's runtime before writing; write nothing when it fails (exit 1) or is incomplete (exit 3)")
    add_check_options(convert)
    convert.add_argument("--template", metavar="MODEL.onnx",
                         help="for --to onnx: a model of the same architecture whose weights are replaced "
                              "(default: trace a whole graph, needs torch)")
    convert.add_argument("--dtype", choices=("float32", "float64", "float16"),
                         help="element type of weights.bin for --to raw/java (default float32)")
    convert.add_argument("--byte-order", choices=("big", "little"),
                         help="byte order of weights.bin for --to raw/java (default big, as Java's DataInputStream)")
    convert.add_argument("--layout", metavar="PATTERN",
                         help="axis order the runtime expects for --to raw/java: a kernel order such as OIHW, HWIO "
                              "or OHWI, optionally with a dense order (OI/IO) and feature order (CHW/HWC): HWIO,IO,HWC")
    convert.add_argument("--emit-forward", action="store_true",
                         help="--to java: also write the model class with its forward pass in float32 Java")
    convert.add_argument("--java-package", metavar="NAME",
                         help="--to java: package of the generated classes, e.g. com.example.model (default: none)")
    convert.add_argument("--java-class", metavar="NAME",
                         help="--to java: class name of the generated model (default: from the source file's name)")
    convert.add_argument("--quiet", action="store_true", help="print no warnings and no progress line")

    explain = commands.add_parser("explain", help="per layer, the exact transforms a conversion applies and why")
    explain.add_argument("src", metavar="SRC", help="model or weights file")
    explain.add_argument("--to", choices=target_names(), default="torch", help="target framework (default torch)")
    add_read_options(explain)
    explain.add_argument("--template", metavar="MODEL.onnx",
                         help="for --to onnx: the template whose weights a conversion would replace")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")

    validate = commands.add_parser("validate", help="prove DST reproduces SRC (exit 0 pass, 1 fail, 2 bad input, "
                                       "3 incomplete: nothing failed but a layer went unchecked)")
    validate.add_argument("src", metavar="SRC", help="the source model file (with its architecture)")
    validate.add_argument("dst", metavar="DST", help="the converted output of any target (a file, or a raw/java "
                          "folder), checked in that target's own runtime")
    add_check_options(validate)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
    add_read_options(validate)

    commands.add_parser("formats", help="list every format read and target written, from the registry")

    detect = commands.add_parser("detect", help="find which kernel semantics reproduce a recorded output")
    detect.add_argument("src", metavar="SRC", help="a file whose semantics are unknown (Keras 1, pickle)")
    detect.add_argument("--input", metavar="X.npy", required=True, help="an input batch in the source's layout")
    detect.add_argument("--expected", metavar="Y.npy", required=True, help="the output the original framework gave")
    detect.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    detect.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    detect.add_argument("--json", action="store_true", help="print JSON (with source_semantics)")
    detect.add_argument("--spec", metavar="FILE", help="JSON naming the layers and arrays of a pickle")
    group_convert_options(commands.choices["convert"])  # sections and examples of convert --help (cli_help.py)
    return parser


def add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", metavar="X.npy", help="an input batch in the source's layout")
    parser.add_argument("--expected", metavar="Y.npy", help="the source framework's output for --input")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"tolerance relative to the reference's scale, max |reference| (default {DEFAULT_RTOL:g})")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="accept (exit 0) a validation in which nothing failed but some layer went unchecked "
                             "(exit 3 otherwise); the unchecked layers are still listed")
    parser.add_argument("--seed", type=int, default=0,
                        help="without --input/--expected: seed of the random input the source's own framework runs "
                             "(default 0)")
    parser.add_argument("--samples", type=positive_int, default=2,
                        help="without --input/--expected: how many random examples (the batch size; default 2)")
    parser.add_argument("--require-all", action="store_true", help=argparse.SUPPRESS)  # the default now


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def check_pair(args: argparse.Namespace) -> None:
    if (args.input is None) != (args.expected is None):
        raise UsageError("--input and --expected go together", fix="Give both recorded arrays, or neither")


def add_read_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--assume-backend", choices=("theano", "tensorflow"),
                        help="Keras backend the file was saved under, when it records none (Keras 1)")
    parser.add_argument("--source-semantics", choices=("convolution", "correlation"),
                        help="force the semantics of the source's convolution kernels")
    parser.add_argument("--spec", metavar="FILE",
                        help="JSON naming the layers and arrays of an architecture-less pickle, a Caffe "
                             "model's .prototxt, or a .t7 model's {\"input_shape\": [C, H, W]} (default: "
                             "NAME.spec.json, NAME.prototxt or deploy.prototxt beside the file)")
    parser.add_argument("--key", metavar="NAME",
                        help="PyTorch checkpoint: the entry holding the state dict (default: found and noted)")
    parser.add_argument("--arch", metavar="MODULE.py:CLASS",
                        help="PyTorch state dict: your module (a class built with no arguments, or a factory "
                             "function returning the module) giving the layers their kinds; imports that file")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 2) instead of warning where a warning flags a likely mistake: a source "
                             "op holding tensors weightport does not understand (kept as stored otherwise), a "
                             "--rename entry that matches nothing")
    add_keras_read_options(parser)


def read_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"assume_backend": args.assume_backend, "source_semantics": args.source_semantics, "spec": args.spec,
            "key": args.key, "arch": args.arch, "strict": args.strict, **keras_read_options(args)}


RENAME_FIX = ('Write a JSON object such as {"conv2d": "features.0"} or a list of regex pairs such as '
              '[["^conv2d_(\\d+)", "features.\\1"]]')


def load_rename(path: str | None) -> dict[str, Any]:
    """``--rename FILE``: a JSON object (exact keys or layer names) or a list of ``[regex, replacement]`` pairs."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except OSError as error:
        raise UsageError(f"cannot read rename file ({error.strerror})", path=path, fix="Check the path") from None
    except ValueError as error:
        raise UsageError(f"rename file is not JSON ({error})", path=path, fix=RENAME_FIX) from None
    if isinstance(mapping, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        return {"rename": mapping}
    if isinstance(mapping, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                         for p in mapping):
        import re
        for pattern, _ in mapping:
            try:
                re.compile(pattern)
            except re.error as error:
                raise UsageError(f"bad regex {pattern!r} in rename file ({error})", path=path, fix=RENAME_FIX) from None
        return {"rename_patterns": [tuple(p) for p in mapping]}
    raise UsageError("rename file must be a JSON object of strings or a list of regex pairs", path=path,
                     fix=RENAME_FIX)


def command_inspect(args: argparse.Namespace) -> int:
    from weightport.api import load
    from weightport.core.describe import describe_model
    model = load(args.src, **{**read_options(args), "keep_unknown": True})  # inspect shows custom layers too
    if not args.no_scan:
        from weightport.core.nonfinite import scan
        for special in scan(model):
            model.warn(special.describe())
    description = describe_model(model)
    if args.json:
        print(json.dumps(description, indent=2))
        return 0
    source = description["source"]
    say(f"{source['path']}: {source['format']}, version {source['version'] or 'unknown'}, "
          f"backend {source['backend'] or 'unknown'}")
    for layer in description["layers"]:
        shape = "" if layer["output_shape"] is None else f" -> {tuple(layer['output_shape'])}"
        say(f"  {layer['name'] or '(top level)'} ({layer['kind']}, {layer['class']}){shape}")
        for name, tensor in layer["tensors"].items():
            semantics = "" if tensor["semantics"] == "none" else f" {tensor['source_semantics']} kernel"
            rule = f" [rule: {tensor['rule']}]" if tensor["rule"] else ""
            say(f"    {name}: {tuple(tensor['shape'])} {tensor['dtype']} {tensor['layout']}"
                  f" (stored {tensor['source_layout']}{semantics}){rule}")
    for warning in description["warnings"]:
        say(f"warning: {warning}")
    return 0


def command_convert(args: argparse.Namespace) -> int:
    check_pair(args)
    with output_path(args.output, args.to) as (output, out, say_wrote):  # "-": the file to stdout, messages to stderr
        return convert_to(args, output, out, say_wrote)


def convert_to(args: argparse.Namespace, output: str, out: Any, say_wrote: bool) -> int:
    from weightport.api import convert
    from weightport.core.errors import ValidationFailed
    try:
        result = convert(args.src, output, to=args.to, force=args.force, **load_rename(args.rename),
                         strict_against=args.strict_against,
                         target_semantics=args.target_semantics, validate=args.validate, input=args.input,
                         expected=args.expected, atol=args.atol, rtol=args.rtol, allow_incomplete=args.allow_incomplete,
                         seed=args.seed, samples=args.samples,
                         fail_on_nonfinite=args.fail_on_nonfinite, dtype=args.dtype, byte_order=args.byte_order,
                         layout=args.layout, emit_forward=args.emit_forward, java_package=args.java_package,
                         java_class=args.java_class, quiet=args.quiet, template=args.template,
                         max_shard_size=args.max_shard_size,
                         **read_options(args))
    except ValidationFailed as failure:
        if getattr(failure, "report", None) is not None:
            print(failure.report.summary(), file=out)  # type: ignore[attr-defined]
        raise
    if not args.quiet:
        for warning in result.warnings:
            say(f"warning: {warning}", file=sys.stderr)
    if result.report is not None:
        print(result.report.summary(), file=out)
    if say_wrote and not args.quiet:
        say(f"wrote {', '.join(result.outputs)}")
    return 0


def command_explain(args: argparse.Namespace) -> int:
    from weightport.api import load
    from weightport.core.options import WriteOptions
    from weightport.formats import check_target_options, make_plan
    options = WriteOptions(template=args.template)
    check_target_options(args.to, options)
    model = load(args.src, **read_options(args))
    plan = make_plan(model, args.to, options)
    rows = [{"key": p.key, "layer": p.layer.name, "kind": p.layer.kind, "shape": list(p.shape),
             "stored": p.tensor.provenance.source_layout, "source_semantics": p.tensor.provenance.source_semantics,
             "target_layout": p.layout.compact(), "target_semantics": p.layout.semantics,
             "transforms": p.describe(), "why": p.tensor.provenance.rule} for p in plan.tensors]
    constants = model.source.details.get("constants", {})  # ONNX: how every source constant reaches the output
    if args.json:
        print(json.dumps({"target": plan.target, "tensors": rows, "warnings": plan.warnings,
                          "constants": constants, "notes": [render_options(n, cli=True) for n in plan.notes]},
                         indent=2))
        return 0
    for note in plan.notes:
        say(render_options(note, cli=True))
    for row in rows:
        steps = "; ".join(row["transforms"]) or "copy as stored"
        why = f"  (why: {row['why']})" if row["why"] else ""
        say(f"{row['key']}: {steps}{why}")
    for line in constant_lines(constants):
        say(line)
    for warning in plan.warnings:
        say(f"warning: {warning}")
    return 0


def constant_lines(constants: dict[str, list[str]]) -> list[str]:
    """A count of the source's constants by how they reach the output, then each folded one (converted and
    kept ones are keys above; structural ones, written into their op's attrs, are listed by explain --json)."""
    if not constants:
        return []
    counts: dict[str, int] = {}
    for how, _ in constants.values():
        counts[how] = counts.get(how, 0) + 1
    lines = [f"constants: {len(constants)} in the source: " + ", ".join(f"{n} {how}" for how, n in sorted(counts.items()))]
    return lines + [f"constant {name!r}: {how} ({where})" for name, (how, where) in constants.items()
                    if how in ("folded", "unaccounted")]  # structural ones: explain --json


def command_validate(args: argparse.Namespace) -> int:
    from weightport.api import load
    from weightport.api import validate_conversion
    check_pair(args)
    source = load(args.src, **read_options(args))
    report = validate_conversion(source, args.dst, args.input, args.expected, args.atol, args.rtol,
                                 args.allow_incomplete, seed=args.seed, samples=args.samples)
    print(report.to_json() if args.json else report.summary())
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            handle.write(report.to_json())
    return report.exit_code


def command_detect(args: argparse.Namespace) -> int:
    from weightport.api import detect
    detection = detect(args.src, args.input, args.expected, atol=args.atol, rtol=args.rtol, spec=args.spec)
    print(detection.to_json() if args.json else detection.summary())
    return 0 if detection.source_semantics or detection.per_layer else 1


def command_formats(args: argparse.Namespace) -> int:
    from weightport.formats import format_table
    print(format_table())
    return 0


COMMANDS = {"formats": command_formats, "detect": command_detect, "inspect": command_inspect,
            "convert": command_convert, "explain": command_explain, "validate": command_validate}


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that every ``finally`` and temporary-file cleanup runs."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
              "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def shard_size(text: str) -> int:
    """``5GB`` -> 5000000000 (decimal units, as transformers counts; ``GiB`` for binary)."""
    number = text.strip().rstrip("bBiIkKmMgGtT")
    unit = text.strip()[len(number):].lower()
    try:
        size = int(float(number) * SIZE_UNITS[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 5GB, 500MB or 2GiB") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard must hold at least one byte")
    return size


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; SIGTERM is handled like Ctrl-C (temporaries removed, nothing half-written)."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread else None
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def run(argv: list[str]) -> int:
    debug = "--debug" in argv  # before or after the command: the internal-error line asks for a rerun with it
    try:
        args = build_parser().parse_args([arg for arg in argv if arg != "--debug"])
        if args.command is None:
            build_parser().print_help()
            return 2
        return COMMANDS[args.command](args)
    except WeightportError as error:
        if debug:
            traceback.print_exc()
        print(f"weightport: error: {error.one_line(cli=True)}", file=sys.stderr)  # options named as flags
        return error.exit_code
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("weightport: interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated:
        print("weightport: terminated (SIGTERM); no output was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (OSError, MemoryError) as error:
        if debug:
            traceback.print_exc()
        problem = BadInputError(f"{type(error).__name__}: {error}", fix="Check the files and free space")
        print(f"weightport: error: {problem.one_line()}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug of ours: still one line, the traceback on request
        if debug:
            traceback.print_exc()
        first = str(error).splitlines()[0] if str(error) else ""
        say(f"weightport: internal error: {type(error).__name__}: {first}. Nothing was written; rerun with "
            "--debug and report it", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
