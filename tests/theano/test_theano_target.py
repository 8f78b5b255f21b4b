"""Theano/Lasagne target: arrays in Lasagne layout with flipped kernels; scipy's true convolution with
the written kernels reproduces TensorFlow, and the file reads back (with its spec) to Keras's output."""

from __future__ import annotations

import json

import h5py
import numpy as np
import scipy.signal
import tensorflow as tf
import torch

from weightport.api import load
from weightport.formats.torch.module import CanonicalModule, canonical_state_dict, from_canonical_output, to_canonical_input
from weightport.formats.theano.reader import read_arrays
from tests.conftest import fixture_path

H5 = fixture_path("keras3", "cnn_flatten_dense.h5")


def test_written_kernels_convolve_like_theano(run_cli, tmp_path):
    out = tmp_path / "lasagne.pkl"
    code, _, err = run_cli("convert", H5, "-o", out, "--to", "theano")
    assert code == 0, err
    arrays = [a for _, a in read_arrays(str(out))]  # allowlist reader: a plain list of arrays
    names = json.loads((tmp_path / "lasagne.spec.json").read_text())["arrays"]
    weight, bias = arrays[names.index("conv_a.W")], arrays[names.index("conv_a.b")]
    with h5py.File(H5) as f:
        kernel = f["model_weights/conv_a/conv_a/kernel"][()]
    x = np.random.RandomState(9).uniform(-1, 1, (1, 9, 11, 3)).astype(np.float32)
    expected = tf.nn.conv2d(x, kernel, 1, "VALID").numpy()[0]
    for o in range(4):
        got = sum(scipy.signal.convolve2d(x[0, :, :, i], weight[o, i], mode="valid") for i in range(3)) + bias[o]
        np.testing.assert_allclose(got - bias[o], expected[:, :, o], rtol=1e-5, atol=1e-5)
    dense = arrays[names.index("dense.W")]
    assert dense.shape == (20, 6)  # (num_inputs, num_units)


def test_theano_file_reads_back_and_reproduces_keras(run_cli, tmp_path):
    out = tmp_path / "lasagne.pkl"
    assert run_cli("convert", H5, "-o", out, "--to", "theano")[0] == 0
    model = load(str(out))  # finds lasagne.spec.json beside it
    module = CanonicalModule(model).eval()
    module.load_state_dict(canonical_state_dict(model), strict=True)
    x = np.load(fixture_path("keras3", "cnn_flatten_dense.input.npy")).transpose(0, 3, 1, 2)
    with torch.no_grad():
        got = module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    np.testing.assert_allclose(got, np.load(fixture_path("keras3", "cnn_flatten_dense.output.npy")), rtol=1e-4, atol=1e-5)


def test_theano_to_theano_round_trip_is_bit_identical_for_kernels(run_cli, tmp_path):
    source = fixture_path("theano", "theano_cnn.values.p2.pkl")
    out = tmp_path / "again.pkl"
    assert run_cli("convert", source, "-o", out, "--to", "theano")[0] == 0
    before = read_arrays(source)
    after = [a for _, a in read_arrays(str(out))]
    original = [a for _, a in read_arrays(source)]
    spec_in = json.load(open(fixture_path("theano", "theano_cnn.spec.json")))["arrays"]
    spec_out = json.loads((tmp_path / "again.spec.json").read_text())["arrays"]
    for name in ("conv1.W", "dense.W", "conv1.b"):
        a, b = original[spec_in.index(name)], after[spec_out.index(name)]
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    # conv2 was a correlation kernel (filter_flip=False); for Theano's default conv2d it is now flipped
    np.testing.assert_array_equal(after[spec_out.index("conv2.W")], original[spec_in.index("conv2.W")][:, :, ::-1, ::-1])
    assert before
