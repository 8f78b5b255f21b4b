"""Mutation check: would the test suite notice these known regressions?

Each mutation is one textual edit (old -> new, in one file, applying exactly once: if the code moved the
script fails loudly instead of testing nothing). They are applied one at a time to a scratch copy of the
repository (converter/, formats/, tests/, fixtures/, docs/, pyproject.toml, README.md) whose ``weightport``
package resolves to the copy (a ``_site/weightport`` folder of links to the copy's converter/ entries, its
``formats`` a link to the copy's formats/, first on PYTHONPATH; the editable install of the real checkout
comes after PathFinder), and the tests listed for the mutation run there. A mutation whose tests fail is
killed; one whose tests pass survived, and the script exits 1.

    .venv/bin/python tests/mutations.py                 # every mutation (a baseline run first)
    .venv/bin/python tests/mutations.py --only flatten_whc --only tf_same_odd_pad_first
    .venv/bin/python tests/mutations.py --list

Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("converter", "formats", "tests", "fixtures", "docs", "pyproject.toml", "README.md")

MATRIX = "tests/test_round_trip_matrix.py"
ORACLES = "tests/test_independent_oracles.py"
THEANO_TARGET = ["tests/theano/test_theano_target.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "theano_conv2d_transpose_as_correlation",
        "Theano-era (Keras 2) Conv2DTranspose kernels read as correlation kernels",
        "converter/core/rules.py",
        '    if backend == "theano":\n        candidates =',
        '    if backend == "theano" and layer_class == "Conv2DTranspose":\n'
        '        return CORRELATION, find_rule("keras2-theano-depthwise-correlation")\n'
        '    if backend == "theano":\n        candidates =',
        (ORACLES, MATRIX, "tests/keras/test_keras_theano.py")),
    Mutation(
        "keras1_deconvolution2d_dropped",
        "Deconvolution2D dropped from the Keras 1 Theano rule",
        "converter/core/rules.py",
        '"AtrousConvolution2D", "Deconvolution2D", "SeparableConvolution2D"),',
        '"AtrousConvolution2D", "SeparableConvolution2D"),',
        (MATRIX, "tests/keras/test_keras1_theano.py")),
    Mutation(
        "flatten_whc",
        "Flatten rows of a channels-last map taken in W, H, C order",
        "converter/core/shapes.py",
        'return "(" + " ".join(spatial + ["c"]) + ")", ',
        'return "(" + " ".join(spatial[::-1] + ["c"]) + ")", ',
        (ORACLES, MATRIX, "tests/keras/test_keras3_to_torch.py", "tests/plain/test_raw_target.py")),
    Mutation(
        "gru_gates_not_reordered",
        "Keras GRU gates kept in Keras's z, r, h order instead of PyTorch's r, z, n",
        "formats/keras/h5_reader.py",
        'gates="zrh", canonical_gates="rzh")',
        'gates="zrh", canonical_gates="zrh")',
        (ORACLES, MATRIX, "tests/keras/test_tf_keras2.py")),
    Mutation(
        "depthwise_m_i",
        "depthwise output channels merged as (m i) instead of (i m)",
        "converter/core/layout.py",
        '"depthwise2d": "(i m) 1 h w",',
        '"depthwise2d": "(m i) 1 h w",',
        (ORACLES, MATRIX, "tests/core/test_layout_frameworks.py")),
    Mutation(
        "tf_same_odd_pad_first",
        "TensorFlow 'same' puts the odd pad at the start",
        "converter/core/shapes.py",
        "    return total // 2, total - total // 2\n",
        "    return total - total // 2, total // 2\n",
        (ORACLES, MATRIX)),
    Mutation(
        "onnx_refuses_bidirectional",
        "the ONNX writer refuses bidirectional RNNs",
        "formats/onnx/writer.py",
        "    dtype = getattr(torch, graph_dtype(model).name)\n",
        "    if any(layer.attrs.get('bidirectional') for layer in model.layers):\n"
        "        raise UnsupportedError('bidirectional RNNs are not written', fix='Convert to torch')\n"
        "    dtype = getattr(torch, graph_dtype(model).name)\n",
        (MATRIX, "tests/onnx/test_onnx_writer.py")),
    Mutation(
        "gru_reset_after_bias_rows_swapped",
        "a reset_after GRU's two bias rows (input, recurrent) swapped",
        "formats/keras/h5_reader.py",
        'for index, param in enumerate(("bias_ih_l0", "bias_hh_l0")):',
        'for index, param in enumerate(("bias_hh_l0", "bias_ih_l0")):',
        (ORACLES, MATRIX)),
    Mutation(
        "theano_same_ignored",
        "Keras-on-Theano 'same' padding taken as TensorFlow's (the even kernel's extra pad after)",
        "converter/core/rules.py",
        '    return "theano" if normalize_backend(backend) == "theano" else "tensorflow"\n',
        '    return "tensorflow"\n',
        (ORACLES, MATRIX, "tests/keras/test_keras_theano.py")),
    Mutation(
        "theano_target_inv_std_without_epsilon",
        "the Theano target writes inv_std = 1/sqrt(var), without the epsilon",
        "formats/theano/writer.py",
        'VarianceToInvStd(float(layer.attrs.get("epsilon", 1e-4)))',
        "VarianceToInvStd(0.0)",
        tuple(THEANO_TARGET)),
    Mutation(
        "theano_target_biases_zeroed",
        "the Theano target writes conv and dense biases as zeros",
        "formats/theano/writer.py",
        "def renamed(item: PlannedTensor, key: str) -> PlannedTensor:\n    return replace(item, key=key)\n",
        "def renamed(item: PlannedTensor, key: str) -> PlannedTensor:\n"
        "    if key.endswith('.b'):\n"
        "        return replace(item, key=key, steps=item.steps + (ZeroedForMutation(),))\n"
        "    return replace(item, key=key)\n\n\n"
        "class ZeroedForMutation:\n"
        "    def apply(self, array):\n        return array * 0\n"
        "    def shape(self, shape):\n        return tuple(shape)\n"
        "    def inverse(self):\n        return self\n"
        "    def is_identity(self):\n        return False\n"
        "    def describe(self):\n        return 'zeroed'\n",
        tuple(THEANO_TARGET)),
    Mutation(
        "tf_transpose_flipped",
        "TensorFlow Conv*Transpose kernels treated as flipped (convolution)",
        "converter/core/rules.py",
        '    if backend == "tensorflow":\n        return CORRELATION, find_rule("keras-tensorflow-correlation")\n',
        '    if backend == "tensorflow":\n'
        '        if layer_class.endswith("Transpose"):\n'
        '            return CONVOLUTION, find_rule("keras-tensorflow-correlation")\n'
        '        return CORRELATION, find_rule("keras-tensorflow-correlation")\n',
        (ORACLES, MATRIX, "tests/keras/test_tf_keras2.py", "tests/keras/test_keras3_to_torch.py")),
]


def make_scratch() -> str:
    """A copy of the repository whose ``import weightport`` finds the copy's code."""
    scratch = tempfile.mkdtemp(prefix="weightport-mutations-")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(scratch, name), ignore=ignore)
        else:
            shutil.copy2(source, os.path.join(scratch, name))
    package = os.path.join(scratch, "_site", "weightport")
    os.makedirs(package)
    for entry in os.listdir(os.path.join(scratch, "converter")):
        os.symlink(os.path.join(scratch, "converter", entry), os.path.join(package, entry))
    os.symlink(os.path.join(scratch, "formats"), os.path.join(package, "formats"))
    return scratch


def environment(scratch: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(scratch, "_site"), scratch]),
                PYTHONDONTWRITEBYTECODE="1",  # an edit of the same size within a second must not hit a stale .pyc
                TF_CPP_MIN_LOG_LEVEL="3")


def check_imports_the_copy(scratch: str) -> None:
    code = "import weightport, weightport.formats, weightport.core.rules as r; " \
           "print(weightport.__file__); print(weightport.formats.__file__); print(r.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=environment(scratch),
                            capture_output=True, text=True, check=True)
    for path in result.stdout.split():
        if not path.startswith(scratch):
            raise SystemExit(f"the scratch copy imports {path}, not its own code: stopping")


def apply(scratch: str, mutation: Mutation) -> str:
    """Apply ``mutation`` in the copy; returns the original text (to restore). Fails when it does not apply once."""
    path = os.path.join(scratch, mutation.path)
    with open(path, encoding="utf-8") as handle:
        original = handle.read()
    count = original.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: the text to replace occurs {count} times in {mutation.path} "
                         "(the code moved): update tests/mutations.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(original.replace(mutation.old, mutation.new))
    return original


def run_tests(scratch: str, tests: tuple[str, ...], first_failure: bool = True) -> tuple[int, str, float]:
    """(pytest exit code, the first failing test or the last lines of output, seconds)."""
    began = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *(["-x"] if first_failure else []),
               *tests]
    result = subprocess.run(command, cwd=scratch, env=environment(scratch), capture_output=True, text=True,
                            timeout=3600)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
    summary = failed[0] if failed else (result.stdout.strip().splitlines() or [""])[-1]
    return result.returncode, summary, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated tests")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args(argv)
    names = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown mutation {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what} ({m.path}); tests: {' '.join(m.tests)}")
        return 0
    scratch = make_scratch()
    try:
        check_imports_the_copy(scratch)
        for mutation in chosen:  # every edit applies, before anything runs
            path = os.path.join(scratch, mutation.path)
            restore = apply(scratch, mutation)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(restore)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, summary, seconds = run_tests(scratch, tests, first_failure=False)
            print(f"baseline (no mutation): pytest exit {code} in {seconds:.0f} s", flush=True)
            if code != 0:
                print(f"the unmutated tests fail ({summary}): a mutation result would mean nothing")
                return 2
        rows = []
        for mutation in chosen:
            original = apply(scratch, mutation)
            try:
                code, summary, seconds = run_tests(scratch, mutation.tests)
            finally:
                with open(os.path.join(scratch, mutation.path), "w", encoding="utf-8") as handle:
                    handle.write(original)
            verdict = {0: "SURVIVED", 1: "killed"}.get(code, f"error (pytest exit {code})")
            rows.append((mutation.name, verdict, summary))
            print(f"{mutation.name:40} {verdict:10} {seconds:5.0f} s  {summary}", flush=True)
        print()
        width = max(len(name) for name, _, _ in rows)
        for name, verdict, summary in rows:
            print(f"{name:{width}}  {verdict:10}  {summary}")
        bad = [name for name, verdict, _ in rows if verdict != "killed"]
        print(f"\n{len(rows) - len(bad)} of {len(rows)} mutations killed" + (f"; not killed: {', '.join(bad)}" if bad
                                                                             else ""))
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"scratch copy kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
