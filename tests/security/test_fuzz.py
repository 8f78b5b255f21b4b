"""Bounded fuzzing of the readers: mutated real files never crash weightport (exit 0 or 2, one line,
never an internal error or a traceback). Hypothesis drives structured byte mutations; CI runs it with a
fixed example budget."""

from __future__ import annotations

import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import fixture_path

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

mutations = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8)


def mutated_copy(source: str, target, edits, cut: float | None) -> None:
    data = bytearray(open(source, "rb").read())
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    target.write_bytes(bytes(data))


def run_reader(run_cli, path) -> None:
    code, out, err = run_cli("inspect", path, "--no-scan")
    assert code in (0, 2), (code, err)
    assert "internal error" not in err and "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1


def fuzz_case(run_cli, tmp_path_factory, source: str, suffix: str, edits, cut) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    target = folder / f"mutated{suffix}"
    mutated_copy(source, target, edits, cut)
    try:
        run_reader(run_cli, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@SETTINGS
@given(edits=mutations, cut=st.none() | st.floats(0, 1))
def test_fuzz_keras_h5(run_cli, tmp_path_factory, edits, cut):
    fuzz_case(run_cli, tmp_path_factory, fixture_path("keras3", "cnn_flatten_dense.h5"), ".h5", edits, cut)


@SETTINGS
@given(edits=mutations, cut=st.none() | st.floats(0, 1))
def test_fuzz_keras_archive(run_cli, tmp_path_factory, edits, cut):
    fuzz_case(run_cli, tmp_path_factory, fixture_path("keras3", "conv1d_rnn.keras"), ".keras", edits, cut)


@SETTINGS
@given(edits=mutations, cut=st.none() | st.floats(0, 1))
def test_fuzz_safetensors(run_cli, tmp_path_factory, edits, cut):
    source = os.path.join(str(tmp_path_factory.getbasetemp()), "seed.safetensors")
    if not os.path.exists(source):
        from weightport.cli import main
        assert main(["convert", fixture_path("keras3", "cnn_flatten_dense.h5"), "-o", source, "--quiet"]) == 0
    fuzz_case(run_cli, tmp_path_factory, source, ".safetensors", edits, cut)
