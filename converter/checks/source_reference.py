"""A reference without recorded outputs: the source file run by its own framework.

When ``validate`` is given no ``--input``/``--expected``, the whole-model check still runs where the
source's own framework can run the source file, on seeded random input of the model's input shape:

* Keras files saved under TensorFlow (Keras 2 ``.h5``, tf.keras ``.h5``, Keras 3 ``.h5``/``.keras``; a
  Keras 3 file saved under the torch or jax backend stores the same kernels): Keras 3
  (:mod:`weightport.formats.keras.runner`);
* ONNX files: onnxruntime (:mod:`weightport.formats.onnx.runner`);
* PyTorch state dicts (``.pt``/``.pth``, safetensors) read with ``--arch``: the user's own module holding
  the file's tensors as ``torch.load(weights_only=True)`` (or safetensors) gave them
  (:func:`weightport.formats.torch.arch.run_source_module`).
* Caffe (with the prototxt weightport read) and Torch7 files: OpenCV 4's importers
  (``cv2.dnn.readNetFromCaffe`` / ``readNetFromTorch``, :mod:`weightport.formats.caffe.oracle`).

None uses weightport's conversion code: the framework loads the file itself (a state dict's tensors go
into the user's module unchanged, by key).  Theano-era
sources (Keras on Theano or CNTK, Theano/Lasagne pickles) have no runtime here that computes what
Theano computed, so they still need the outputs Theano recorded: the whole-model check is then a skip
with that reason, never a pass.  A bare weights file (``.weights.h5``, ``save_weights``) has no
architecture for Keras to rebuild: a skip too.

The input: ``samples`` examples (default :data:`DEFAULT_SAMPLES`, the batch axis; a graph exported with a
fixed batch gets that batch) drawn from
``numpy.random.default_rng(seed)``, uniform in [-1, 1) as float32, in the source's own layout (channels-last
for a channels-last Keras model, ``(seq, batch, features)`` for an ONNX graph starting with an
LSTM/GRU); an input feeding an Embedding gets integer indices below its vocabulary size.  Any other
axis the model leaves free (a sequence length, a fully-convolutional map) gets :data:`DEFAULT_FREE_DIM`:
64, large enough for the downsampling of the real detectors and classifiers in fixtures/real (Paddle2ONNX
PP-OCR divides a map by 32, then pools by 2), small enough to keep the run quick.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightport.core.model import Model

DEFAULT_SEED = 0
DEFAULT_SAMPLES = 2
DEFAULT_FREE_DIM = 64
KERAS_RUNNABLE_BACKENDS = ("tensorflow", "torch", "jax")  # backends whose kernels Keras 3 computes as stored

# Which framework runs a source file: (source format, backends or "*", what to call it, "module:function"); the
# function takes the source Model and the input batch.
RUNNERS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("keras_h5", KERAS_RUNNABLE_BACKENDS, "Keras 3", "weightport.formats.keras.runner:run_keras_source"),
    ("onnx", ("*",), "onnxruntime", "weightport.formats.onnx.runner:run_onnx_source"),
    ("torch_pt", ("*",), "PyTorch (the --arch module)", "weightport.formats.torch.arch:run_source_module"),
    ("safetensors", ("*",), "PyTorch (the --arch module)", "weightport.formats.torch.arch:run_source_module"),
    ("caffe", ("*",), "OpenCV", "weightport.formats.caffe.oracle:run_caffe_source"),
    ("torch7", ("*",), "OpenCV", "weightport.formats.torch7.oracle:run_torch7_source"),
)
INNER_OUTPUTS = frozenset({"caffe"})  # formats whose runner also gives named inner outputs: run(source, x, outputs=names)
THEANO_ERA = ("a Theano-era source: no framework here computes what Theano (or CNTK) computed with its kernels, "
              "so it needs the outputs recorded where it ran: give --input X.npy --expected Y.npy")


@dataclass
class Reference:
    """What the whole-model check compares against: recorded arrays, or the source run by its own framework
    (``runner``) on seeded random input; ``reason`` says why there is none."""

    x: np.ndarray | tuple[np.ndarray, ...] | None = None  # a tuple for a model of several inputs
    expected: np.ndarray | None = None
    runner: str | None = None
    seed: int | None = None
    samples: int | None = None
    input_shape: list = field(default_factory=list)  # one list of sizes per input when there are several
    reason: str = ""

    @property
    def label(self) -> str:
        """The whole-model check's name."""
        if self.runner is None:
            return "whole model vs recorded output"
        return f"whole model vs {self.runner} running the source (seed {self.seed}, {self.samples} samples)"

    def to_dict(self) -> dict:
        return {"runner": self.runner or "recorded", "seed": self.seed, "samples": self.samples,
                "input_shape": self.input_shape, "reason": self.reason}


def runner_for(source: Model) -> tuple[str, str]:
    """(name, "module:function") of the framework that runs ``source``; NotImplementedError says why none."""
    info = source.source
    for fmt, backends, name, function in RUNNERS:
        if info.format == fmt and ("*" in backends or (info.backend or "") in backends):
            return name, function
    if info.format == "keras_h5":
        raise NotImplementedError(f"a Keras file saved under the {info.backend or 'unrecorded'} backend is "
                                  + THEANO_ERA)
    if info.format == "theano_pickle":
        raise NotImplementedError(THEANO_ERA)
    raise NotImplementedError(f"no framework here runs {info.format} sources: record an input and the source framework's output for it")


InputShape = tuple[tuple[int | None, ...], int]  # the source's input shape (None where free) and its batch axis


def random_source_input(source: Model, wanted: InputShape | list[InputShape | None] | None, seed: int,
                        samples: int) -> np.ndarray | tuple[np.ndarray, ...]:
    """Seeded random input of the source model's input shape ``wanted``, in the source's own layout (see the
    module docstring); for a list of shapes (a model of several inputs, such as an RNN's initial states) a
    tuple of arrays, one per input, drawn in turn from the same generator.  NotImplementedError when the
    source records no input shape."""
    if not source.has_architecture:
        raise NotImplementedError("the source holds weights only, with no architecture for its framework to run")
    several = isinstance(wanted, list)
    shapes = wanted if isinstance(wanted, list) else [wanted]
    if any(shape is None for shape in shapes):
        raise NotImplementedError("the source records no input shape")
    rng = np.random.default_rng(seed)
    vocabulary = embedding_vocabulary(source)
    arrays = []
    for shape, batch_axis in shapes:  # type: ignore[misc]
        sizes = tuple(samples if axis == batch_axis and n is None else (DEFAULT_FREE_DIM if n is None else n)
                      for axis, n in enumerate(shape))  # a batch the graph fixes is taken as it is
        if vocabulary is not None and not arrays:
            arrays.append(rng.integers(0, vocabulary, size=sizes).astype(np.int32))
        else:
            arrays.append(rng.uniform(-1.0, 1.0, size=sizes).astype(np.float32))
    return tuple(arrays) if several else arrays[0]


def embedding_vocabulary(source: Model) -> int | None:
    """The vocabulary size of an Embedding reading the model's input directly (None when none does)."""
    first = source.layers[0].name if source.layers else None
    for layer in source.layers:
        if layer.kind == "embedding" and first in layer.inputs and "weight" in layer.tensors:
            return int(layer.tensors["weight"].shape[0])
    return None


def self_reference(source: Model, wanted: InputShape | list[InputShape | None] | None, seed: int = DEFAULT_SEED,
                   samples: int = DEFAULT_SAMPLES) -> Reference:
    """The source run by its own framework on seeded random input of shape ``wanted`` (the source's input
    shape and batch axis, weightport.checks.validate.expected_input_shape), or a :class:`Reference` whose
    ``reason`` says why it cannot be (its arrays None)."""
    reference = Reference(seed=seed, samples=samples)
    try:
        name, function = runner_for(source)
        x = random_source_input(source, wanted, seed, samples)
    except NotImplementedError as why:
        reference.reason = str(why)
        return reference
    reference.input_shape = [list(a.shape) for a in x] if isinstance(x, tuple) else list(x.shape)
    first = wanted[0] if isinstance(wanted, list) else wanted
    if first is not None and first[0][first[1]] is not None:  # a graph of a fixed batch: that many samples
        reference.samples = int(first[0][first[1]])
    try:
        expected = load_runner(function)(source, x)
    except NotImplementedError as why:
        reference.reason = f"{name} cannot run the source: {why}"
        return reference
    except ImportError as error:
        reference.reason = f"{error.name or name} is not installed (pip install 'weightport[all]')"
        return reference
    except Exception as error:  # the framework refused the file or the input: report, never crash
        reference.reason = f"{name} could not run the source ({type(error).__name__}: {str(error).strip()[:200]})"
        return reference
    reference.x, reference.expected, reference.runner = x, expected, name
    return reference


def source_outputs(source: Model, x: np.ndarray, names: list[str]) -> tuple[str, list[np.ndarray]]:
    """(runner name, outputs) of the layers ``names`` (the canonical model's) in the source run by its own
    framework on ``x``: what a model whose end is not ported (SSD's post-processing) is compared on.
    NotImplementedError when no runner here gives a model's inner outputs."""
    name, function = runner_for(source)
    if source.source.format not in INNER_OUTPUTS:
        raise NotImplementedError(f"{name} is not asked for inner outputs here")
    return name, load_runner(function)(source, x, outputs=names)


def load_runner(function: str) -> Callable[..., Any]:
    """The runner a :data:`RUNNERS` row names (``"module:function"``), imported only now."""
    module, _, attribute = function.partition(":")
    return getattr(importlib.import_module(module), attribute)
