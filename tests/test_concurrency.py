"""Safe under load: the Python API called from many threads, in process pools and in long-running workers.

Every conversion here runs the real readers and writers on real files: a VGG-shaped Keras 2 HDF5
written with h5py (kernels of several MiB, so the streaming writers copy them through their block
buffers in several blocks) and the bundled fixtures.  Outputs of concurrent runs are compared
byte for byte with a run on one thread.
"""

from __future__ import annotations

import _thread
import hashlib
import json
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from tests.conftest import fixture_path, require
from weightport import convert, load, save
from weightport.core.errors import WeightportError

THREADS = 4
MIB = 1 << 20


def conv_config(name: str, filters: int) -> dict:
    return {"class_name": "Conv2D", "config": {"name": name, "filters": filters, "kernel_size": [3, 3],
                                               "strides": [1, 1], "padding": "valid", "data_format": "channels_last",
                                               "dilation_rate": [1, 1], "groups": 1, "activation": "relu",
                                               "use_bias": True}}


def write_vgg_like(path: str, side: int = 12, channels: tuple[int, ...] = (3, 64, 256, 512, 512),
                   dense: tuple[int, ...] = (1024, 10), seed: int = 0, compress_last: bool = False) -> str:
    """A Keras 2 (tf.keras) HDF5 model, VGG-shaped: valid 3x3 convs, Flatten, Dense; every kernel is transposed
    on the way to PyTorch and the first Dense's rows are permuted.  The default is 46 MiB: conv4's kernel
    9 MiB (two 8 MiB blocks), dense1's 32 MiB (four).  ``compress_last`` stores the last kernel
    gzip-compressed (read through h5py, not memory-mapped)."""
    rng = np.random.default_rng(seed)
    layers = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, side, side, channels[0]],
                                                      "dtype": "float32", "name": "input_1"}}]
    weights: dict[str, list[tuple[str, np.ndarray]]] = {}
    for k, (cin, cout) in enumerate(zip(channels, channels[1:])):
        layers.append(conv_config(f"conv{k + 1}", cout))
        weights[f"conv{k + 1}"] = [("kernel:0", rng.standard_normal((3, 3, cin, cout), dtype=np.float32)),
                                   ("bias:0", rng.standard_normal(cout, dtype=np.float32))]
    layers.append({"class_name": "Flatten", "config": {"name": "flatten", "data_format": "channels_last"}})
    features = (side - 2 * (len(channels) - 1)) ** 2 * channels[-1]
    for k, units in enumerate(dense):
        layers.append({"class_name": "Dense", "config": {"name": f"dense{k + 1}", "units": units,
                                                         "activation": "linear", "use_bias": True}})
        weights[f"dense{k + 1}"] = [("kernel:0", rng.standard_normal((features, units), dtype=np.float32)),
                                    ("bias:0", rng.standard_normal(units, dtype=np.float32))]
        features = units
    names = [layer["config"]["name"] for layer in layers]
    last = names[-1]
    with h5py.File(path, "w") as handle:
        handle.attrs["backend"] = "tensorflow"
        handle.attrs["keras_version"] = "2.15.0"
        handle.attrs["model_config"] = json.dumps({"class_name": "Sequential",
                                                   "config": {"name": "vgg_like", "layers": layers}})
        root = handle.create_group("model_weights")
        root.attrs["layer_names"] = np.array([name.encode() for name in names])
        for name in names:
            group = root.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{w}".encode() for w, _ in weights.get(name, [])],
                                                   dtype="S")
            for variable, array in weights.get(name, []):
                compress = {"compression": "gzip"} if compress_last and name == last and variable == "kernel:0" else {}
                group.create_dataset(f"{name}/{variable}", data=array, **compress)
    return path


@pytest.fixture(scope="module")
def vgg_like(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_vgg_like(str(tmp_path_factory.mktemp("vgg") / "vgg.h5"))


def digest(path: str) -> str:
    """SHA-256 of a file, or of a folder's file names and contents."""
    hashed = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            hashed.update(name.encode() + b"\0" + digest(os.path.join(path, name)).encode())
    else:
        with open(path, "rb") as handle:
            hashed.update(handle.read())
    return hashed.hexdigest()


def outputs_of(folder: str, name: str) -> dict[str, str]:
    """Digest of every file the conversion wrote into ``folder`` (the output and its sidecars)."""
    return {entry: digest(os.path.join(folder, entry)) for entry in sorted(os.listdir(folder))
            if entry.startswith(name)}


def temporaries(folder: str) -> list[str]:
    return [entry for root, dirs, files in os.walk(folder) for entry in dirs + files
            if entry.startswith(".weightport-")]


def run_together(jobs: list) -> list:
    """Run every job on its own thread, all released at once; returns their results (or raises the first error)."""
    start = threading.Barrier(len(jobs))

    def released(job):
        start.wait()
        return job()
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(released, job) for job in jobs]
        return [future.result() for future in futures]


# (target, output name, the module it needs): every writer, the streaming ones (safetensors, raw, java) included
TARGETS = [("torch", "model.safetensors", None), ("torch", "model.pt", "torch"), ("raw", "model_raw", None),
           ("java", "model_java", None), ("npz", "model.npz", None), ("keras", "model.h5", None),
           ("keras", "model.weights.h5", None), ("onnx", "model.onnx", "onnx"),
           ("onnx-external", "model_external.onnx", "onnx")]


@pytest.mark.parametrize("to, name, needs", TARGETS, ids=[t[1] for t in TARGETS])
def test_threads_write_the_bytes_one_thread_writes(tmp_path, monkeypatch, vgg_like, to, name, needs):
    """N threads convert the same VGG-shaped model at once, half loading it themselves, half sharing one
    loaded Model: every output (sidecars and external data included) is byte-identical to the output
    of a conversion alone."""
    if needs:
        require(needs)
    if to == "onnx-external":  # tensors go to NAME.onnx.data above the threshold; 2 GB would take too long here
        require("torch")
        from weightport.formats.onnx import writer
        monkeypatch.setattr(writer, "EXTERNAL_THRESHOLD", 1 * MIB)
        to = "onnx"
    alone = tmp_path / "alone"
    alone.mkdir()
    save(load(vgg_like), str(alone / name), to=to)
    expected = outputs_of(str(alone), name)
    if name.endswith("_external.onnx"):
        assert name + ".data" in expected
    shared = load(vgg_like)
    folders = [tmp_path / f"thread{k}" for k in range(THREADS)]
    for folder in folders:
        folder.mkdir()
    jobs = [lambda folder=folder, k=k: save(shared if k % 2 else load(vgg_like), str(folder / name), to=to)
            for k, folder in enumerate(folders)]
    run_together(jobs)
    for folder in folders:
        assert outputs_of(str(folder), name) == expected, f"{folder.name} differs from the conversion alone"
        assert not temporaries(str(folder))


def test_a_copy_never_waits_for_helper_threads_busy_with_other_conversions():
    """Every helper copy thread busy elsewhere: the half offered to them runs on the calling thread instead,
    and in_parallel returns without waiting for them."""
    from weightport.core.blocks import COPY_THREADS, HELPERS, in_parallel
    release = threading.Event()
    busy = [HELPERS.get().submit(release.wait, 60) for _ in range(COPY_THREADS)]
    try:
        ran: list[tuple[int, int]] = []
        in_parallel(lambda share: ran.append((share, threading.get_ident())), [0, 1], 2)
        assert sorted(share for share, _ in ran) == [0, 1]
        assert {thread for _, thread in ran} == {threading.get_ident()}
        assert not any(future.done() for future in busy)
    finally:
        release.set()


VALIDATED = [("keras3", "cnn_flatten_dense.h5"), ("keras3", "conv1d_rnn.h5"), ("keras3", "functional_residual.keras"),
             ("keras3", "conv3d_grouped.h5"), ("tf_keras2", "rnn_stack.h5"), ("keras_theano", "k2_cnn_channels_last.h5"),
             ("onnx", "torch_cnn.onnx"), ("onnx", "gru_linear_before_reset.onnx")]


def test_concurrent_validations_report_what_sequential_ones_do(tmp_path):
    """Validation runs real torch, TensorFlow/Keras and onnxruntime; four threads validating every fixture at
    once (each starting at a different one) give the reports, numbers included, of one thread doing it."""
    for needs in ("torch", "tensorflow", "onnxruntime"):
        require(needs)
    from weightport.api import detect, validate
    from weightport.core.describe import describe_model
    jobs = []
    for folder, name in VALIDATED:
        stem = name.rsplit(".", 1)[0]
        source, converted = fixture_path(folder, name), str(tmp_path / f"{folder}_{stem}.safetensors")
        convert(source, converted, to="torch")
        inputs = {"input": fixture_path(folder, f"{stem}.input.npy"),
                  "expected": fixture_path(folder, f"{stem}.output.npy")}
        jobs.append(lambda source=source, converted=converted, inputs=inputs:
                    validate(source, converted, **inputs).to_json())
        jobs.append(lambda source=source: json.dumps(describe_model(load(source)), sort_keys=True))
    k1 = fixture_path("keras_theano", "k1_conv2d_th")
    jobs.append(lambda: detect(k1 + ".h5", k1 + ".input.npy", k1 + ".output.npy").to_json())
    alone = [job() for job in jobs]
    assert all(json.loads(report)["passed"] for report in alone[0:-1:2])

    def every_job_from(first: int) -> list[str]:
        return [jobs[(first + k) % len(jobs)]() for k in range(len(jobs))]
    together = run_together([lambda first=first: every_job_from(first) for first in range(0, 2 * THREADS, 2)])
    for first, reports in zip(range(0, 2 * THREADS, 2), together):
        for k, report in enumerate(reports):
            assert report == alone[(first + k) % len(jobs)]


SOAK_SOURCES = [("keras3", "cnn_flatten_dense.h5"), ("keras3", "conv1d_rnn.keras"),
                ("keras3", "functional_residual.weights.h5"), ("tf_keras2", "cnn_sequential.h5"),
                ("onnx", "torch_cnn.onnx"), ("onnx", "torch_cnn_external.onnx"),
                ("keras_theano", "k2_cnn_channels_last.h5"), ("theano", "theano_cnn.pkl_utils.zip")]
SOAK_TARGETS = [("torch", ".safetensors"), ("torch", ".pt"), ("npz", ".npz"), ("raw", ""), ("keras", ".h5"),
                ("java", ""), ("keras", ".weights.h5"), ("onnx", ".onnx")]


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd and VmRSS (Linux)")
def test_a_thousand_conversions_leave_memory_and_descriptors_where_they_were(tmp_path):
    """A long-running worker: 1,000 conversions of mixed formats (every fixture source to every target, some
    refused, e.g. an architecture-less file to ONNX) on four threads.  After the first round has warmed
    every path, resident memory stays within a fixed margin and no file descriptor or memory map is left
    open: no cache, no buffer kept per tensor size, no leaked handle."""
    require("torch")
    require("onnx")
    pairs = [(fixture_path(folder, name), to, ext) for folder, name in SOAK_SOURCES for to, ext in SOAK_TARGETS]
    refused = []

    def one(index: int) -> None:
        source, to, ext = pairs[index % len(pairs)]
        output = str(tmp_path / f"{to}_{threading.get_ident()}_{index % 2}{ext}")  # this thread's own files
        try:
            save(load(source), output, to=to, force=True)
        except WeightportError as error:
            refused.append(error.problem)

    def round_of(count: int, start: int) -> None:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, range(start, start + count)))
    round_of(2 * len(pairs), 0)
    warm_rss, warm_fds = resident_mib(), open_descriptors()
    began = time.monotonic()
    round_of(1000 - 2 * len(pairs), 2 * len(pairs))
    seconds = time.monotonic() - began
    rss, fds = resident_mib(), open_descriptors()
    print(f"soak: warm {warm_rss:.0f} MiB / {warm_fds} fds, after 1000 conversions {rss:.0f} MiB / {fds} fds, "
          f"{seconds:.1f} s, {len(refused)} refused")
    assert refused and len(set(refused)) < 5  # failures happened, stayed local and were the expected ones
    assert fds <= warm_fds
    assert rss - warm_rss < 48, f"resident memory grew from {warm_rss:.0f} MiB to {rss:.0f} MiB"
    assert not temporaries(str(tmp_path))


def test_a_failing_conversion_leaves_no_temporary_files_and_others_finish(tmp_path, vgg_like):
    """One thread converts a model whose last kernel is damaged (a gzip chunk overwritten: the failure comes
    after its output file is half written) while three convert a good one into the same folder: the bad one
    raises a one-line error and leaves nothing behind, the others write what a conversion alone writes,
    and the process converts again afterwards."""
    broken = write_vgg_like(str(tmp_path / "broken.h5"), compress_last=True)
    with h5py.File(broken, "r") as handle:
        chunk = handle["model_weights/dense2/dense2/kernel:0"].id.get_chunk_info(0)
    with open(broken, "r+b") as handle:
        handle.seek(chunk.byte_offset)
        handle.write(b"\xff" * chunk.size)
    alone = tmp_path / "alone.safetensors"
    save(load(vgg_like), str(alone), to="torch")
    out = tmp_path / "out"
    out.mkdir()
    for to, name in (("torch", "bad.safetensors"), ("raw", "bad_raw"), ("keras", "bad.h5")):
        jobs = [lambda to=to, name=name: save(load(broken), str(out / name), to=to)]
        jobs += [lambda k=k: save(load(vgg_like), str(out / f"good{k}.safetensors"), to="torch", force=True)
                 for k in range(THREADS - 1)]
        with pytest.raises(WeightportError, match="dense2"):
            run_together(jobs)
        assert not os.path.exists(out / name)
        assert not temporaries(str(tmp_path))
        for k in range(THREADS - 1):
            assert digest(str(out / f"good{k}.safetensors")) == digest(str(alone))
    again = tmp_path / "again.safetensors"
    convert(vgg_like, str(again), to="torch")
    assert digest(str(again)) == digest(str(alone))


def test_a_keyboard_interrupt_stops_one_conversion_only(tmp_path, vgg_like):
    """Ctrl-C reaches the main thread while it converts, three worker threads converting too: the main
    thread's conversion stops with KeyboardInterrupt and leaves no temporary file, the workers' outputs are
    whole and right, and the process converts again."""
    alone = tmp_path / "alone.safetensors"
    save(load(vgg_like), str(alone), to="torch")
    out = tmp_path / "out"
    out.mkdir()
    stop = threading.Event()

    def worker(k: int) -> int:
        done = 0
        while not stop.is_set():
            save(load(vgg_like), str(out / f"worker{k}.safetensors"), to="torch", force=True)
            done += 1
        return done

    interrupted = False
    with ThreadPoolExecutor(THREADS - 1) as pool:
        workers = [pool.submit(worker, k) for k in range(THREADS - 1)]
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        try:
            for k in range(1000):  # well past the timer: the interrupt lands inside one of these
                save(load(vgg_like), str(out / "main.safetensors"), to="torch", force=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            timer.cancel()
            stop.set()
        counts = [future.result() for future in workers]
    assert interrupted and all(counts)
    assert not temporaries(str(tmp_path))
    for k in range(THREADS - 1):
        assert digest(str(out / f"worker{k}.safetensors")) == digest(str(alone))
    save(load(vgg_like), str(out / "main.safetensors"), to="torch", force=True)
    assert digest(str(out / "main.safetensors")) == digest(str(alone))


def convert_in_worker(job: tuple[str, str, str]) -> tuple[object, str]:
    """Run in a pool worker: convert, and return the result and the output's digest (errors are raised)."""
    source, output, to = job
    result = convert(source, output, to=to, force=True)
    return result, digest(output)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_process_pools_convert_and_return_results_and_errors(tmp_path, vgg_like, method):
    """Under multiprocessing (spawn and fork) workers convert as this process does, and their results and
    errors come back whole.  For fork, this process has already streamed a model (its copy threads and
    block buffers exist when it forks)."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} on this platform")
    alone = tmp_path / "alone.safetensors"
    expected = convert_in_worker((vgg_like, str(alone), "torch"))
    jobs = [(vgg_like, str(tmp_path / f"{method}{k}.safetensors"), "torch") for k in range(3)]
    jobs.append((fixture_path("keras3", "cnn_flatten_dense.h5"), str(tmp_path / f"{method}_raw"), "raw"))
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map_async(convert_in_worker, jobs).get(timeout=300)
        for (result, got), (_, output, _) in zip(results[:3], jobs):
            assert got == expected[1] and result.outputs == [output] and result.warnings == expected[0].warnings
        assert results[3][0].outputs == [jobs[3][1]]
        missing = str(tmp_path / "missing.h5")
        with pytest.raises(WeightportError) as raised:
            pool.apply_async(convert_in_worker, ((missing, str(tmp_path / "x.safetensors"), "torch"),)).get(timeout=300)
    assert raised.value.path == missing and raised.value.problem == "no such file" and raised.value.exit_code == 2
    assert not temporaries(str(tmp_path))


def test_errors_and_results_survive_pickling():
    """What a worker process sends back: every WeightportError subclass with its fields (and attributes set
    on it), and a ConversionResult with its validation report."""
    from weightport.api import ConversionResult
    from weightport.checks.report import Check, Report
    from weightport.core import errors
    classes = [item for item in vars(errors).values()
               if isinstance(item, type) and issubclass(item, errors.WeightportError)]
    assert len(classes) >= 10
    for cls in classes:
        error = (cls("torch", "torch", "Reading .pt files") if cls is errors.MissingDependencyError
                 else cls("the problem", path="/models/x.h5", fix="Do this instead"))
        error.report = Report("a.h5", "b.safetensors", 1e-5, 1e-5)
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls and str(again) == str(error) and again.args == error.args
        assert (again.problem, again.path, again.fix, again.exit_code) == (error.problem, error.path, error.fix,
                                                                            error.exit_code)
        assert again.report == error.report
    report = Report("a.h5", "b.safetensors", 1e-5, 1e-5, [Check("whole model", "pass", "whole-model", max_abs_error=1e-7)],
                    [("conv", "conv")], ["a note"])
    result = ConversionResult(["b.safetensors"], ["a warning"], report)
    assert pickle.loads(pickle.dumps(result)) == result
