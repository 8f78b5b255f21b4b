"""Which framework, version, backend and layer class convolves: the one semantics table.

Every rule names its provenance (the framework source that explains it and the
fixture that proves it).  Readers call :func:`keras_kernel_semantics` and
:func:`keras_flatten_order`; nothing else in the project decides semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightport.core.errors import AmbiguousSemanticsError, UnsupportedError
from weightport.core.layout import CONVOLUTION, CORRELATION

if TYPE_CHECKING:
    from weightport.core.model import Model


@dataclass(frozen=True)
class Rule:
    """A semantics rule: kernels of ``classes`` saved by ``framework`` ``versions`` under ``backend``."""

    id: str
    framework: str
    versions: str
    backend: str
    classes: tuple[str, ...]
    semantics: str
    provenance: str


KERAS_CONV_CLASSES = (
    "Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D",
    "AtrousConvolution1D", "AtrousConvolution2D", "AtrousConv2D",
    "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D", "Deconvolution3D",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "SeparableConvolution2D", "ConvLSTM2D", "ConvLSTM1D", "ConvLSTM3D",
)

RULES: tuple[Rule, ...] = (
    Rule(
        "keras-tensorflow-correlation", "keras", "all", "tensorflow", ("*",), CORRELATION,
        "TensorFlow's conv ops (tf.nn.convolution, conv2d_transpose, depthwise_conv2d) compute "
        "cross-correlation; Keras with the TensorFlow, JAX or torch backend stores kernels it "
        "applies as is. Proved by tests/core/test_layout_frameworks.py against tf.nn and Keras layers.",
    ),
    Rule(
        "keras-jax-torch-correlation", "keras", ">=3", "jax|torch|numpy", ("*",), CORRELATION,
        "Keras 3 backends share one kernel layout and cross-correlation semantics "
        "(keras/src/backend/*/nn.py conv).",
    ),
    Rule(
        "keras2-theano-conv-flipped", "keras", "2.x", "theano",
        ("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D",
         "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D", "Deconvolution3D", "ConvLSTM2D"),
        CONVOLUTION,
        "keras 2.3.1 keras/backend/theano_backend.py conv1d/conv2d (l.2192)/conv3d call T.nnet.conv2d/conv3d "
        "with Theano's default filter_flip=True; conv2d_transpose (l.2227) passes filter_flip=not "
        "flip_filters with flip_filters=False; ConvLSTM2D goes through K.conv2d. Proved by "
        "fixtures/keras_theano k2_conv1d_single, k2_conv2d_single, k2_conv3d_single, k2_transpose_single: "
        "the recorded output equals scipy.signal.convolve of the stored kernel (error < 1e-6) and not "
        "scipy.signal.correlate (error > 3).",
    ),
    Rule(
        "keras2-theano-depthwise-correlation", "keras", "2.x", "theano",
        ("DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"),
        CORRELATION,
        "keras 2.3.1 keras/backend/theano_backend.py _preprocess_conv2d_depthwise_kernel (l.1996-2005) "
        "reverses the kernel (kernel[::-1, ::-1]) before T.nnet.conv2d flips it again, so depthwise and "
        "separable kernels are stored as cross-correlation kernels even under Theano. Proved by "
        "fixtures/keras_theano k2_depthwise_single and k2_separable_single: recorded output equals "
        "scipy.signal.correlate of the stored kernel (error < 1e-6), not convolve (error > 3).",
    ),
    Rule(
        "keras1-theano-conv-flipped", "keras", "1.x", "theano",
        ("Convolution1D", "Convolution2D", "Convolution3D", "AtrousConvolution1D",
         "AtrousConvolution2D", "Deconvolution2D", "SeparableConvolution2D"),
        CONVOLUTION,
        "keras 1.2 keras/backend/theano_backend.py conv2d uses T.nnet.conv2d with its default "
        "filter_flip=True. Proved by fixtures/keras_theano/RULES.md (Keras 1.2.2 on Theano 1.0.5: "
        "k1_conv2d_single_th reproduces as convolution to 4.8e-7, as correlation off by 8.4; k1_conv2d_tf, "
        "k1_conv1d, k1_deconv) and tests/keras/test_keras1_theano.py.",
    ),
)


CAFFE_RULE = Rule(
    "caffe-correlation", "caffe", "all", "caffe", ("Convolution", "Deconvolution"), CORRELATION,
    "BVLC Caffe src/caffe/layers/base_conv_layer.cpp forward_cpu_gemm: im2col then a GEMM with the stored "
    "(out, in/group, kh, kw) weights, no flip (cross-correlation); Deconvolution runs the same GEMM "
    "transposed (backward_cpu_gemm). Proved by fixtures/caffe: OpenCV's readNetFromCaffe forward equals the "
    "converted torch module, and fails with the kernel flipped (tests/caffe/test_caffe_opencv.py).",
)
TORCH7_RULE = Rule(
    "torch7-correlation", "torch7", "all", "lua", ("nn.SpatialConvolution", "nn.SpatialConvolutionMM",
                                                   "nn.SpatialFullConvolution", "nn.SpatialDilatedConvolution"),
    CORRELATION,
    "Torch7 nn SpatialConvolutionMM.c unfolds the input and multiplies by weight (nOut, nIn*kH*kW) with no "
    "flip (cross-correlation), as cudnn.SpatialConvolution. Proved by fixtures/torch7 against OpenCV's "
    "readNetFromTorch.",
)
RULES = RULES + (CAFFE_RULE, TORCH7_RULE)


def find_rule(rule_id: str) -> Rule:
    for rule in RULES:
        if rule.id == rule_id:
            return rule
    raise KeyError(rule_id)


def keras_major(version: str | None) -> int | None:
    """Major version of a Keras version string (``"2.3.1"`` -> 2)."""
    if not version:
        return None
    head = version.split(".")[0]
    return int(head) if head.isdigit() else None


def normalize_backend(backend: str | None) -> str | None:
    if backend is None:
        return None
    backend = backend.lower()
    return "tensorflow" if backend in ("tensorflow", "tf") else backend


def keras_kernel_semantics(version: str | None, backend: str | None, layer_class: str,
                           path: str | None = None) -> tuple[str, Rule]:
    """Semantics of the kernels of a ``layer_class`` layer in a Keras file, and the deciding rule.

    Raises :class:`AmbiguousSemanticsError` when the backend is unknown (Keras 1
    files record none); the user then passes ``--assume-backend``.
    """
    backend = normalize_backend(backend)
    major = keras_major(version)
    if backend is None:
        raise AmbiguousSemanticsError(
            f"the file records no Keras backend, so whether its {layer_class} kernels are "
            "convolution (Theano) or correlation (TensorFlow) kernels cannot be known",
            path=path,
            fix="Pass {opt:assume_backend=theano} or {opt:assume_backend=tensorflow} "
                "(or run 'weightport detect' with a recorded input and output)",
        )
    if backend == "tensorflow":
        return CORRELATION, find_rule("keras-tensorflow-correlation")
    if backend == "theano":
        candidates = ("keras1-theano-conv-flipped",) if major == 1 else (
            "keras2-theano-conv-flipped", "keras2-theano-depthwise-correlation")
        for rule_id in candidates:
            rule = find_rule(rule_id)
            if layer_class in rule.classes:
                return rule.semantics, rule
        raise AmbiguousSemanticsError(
            f"no established rule says whether Keras {version} under Theano stores {layer_class} "
            "kernels flipped",
            path=path, fix="Pass {opt:source_semantics=convolution} or {opt:source_semantics=correlation}",
        )
    if backend in ("jax", "torch", "numpy", "cntk"):
        return CORRELATION, find_rule("keras-jax-torch-correlation")
    raise AmbiguousSemanticsError(f"unknown Keras backend {backend!r}", path=path,
                                  fix="Pass {opt:assume_backend=theano} or {opt:assume_backend=tensorflow}")


def keras_flatten_order(version: str | None, data_format: str, flatten_data_format: str | None) -> str:
    """Order in which a Keras Flatten of a spatial map lays out its features: ``"hwc"`` or ``"chw"``.

    ``data_format`` is the layout of the map reaching the Flatten.  A map is
    flattened as it is laid out (channels-last: H, W, C; channels-first:
    C, H, W), except that Keras >= 2.2.3 (and Keras 3) Flatten with
    ``data_format='channels_first'`` first moves channels last and so flattens
    as H, W, C (keras/layers/core.py Flatten.call). Proved by
    fixtures/keras_theano k2_cnn_channels_first (H, W, C) and
    k2_cnn_channels_first_plain_flatten (C, H, W).
    """
    if data_format == "channels_last":
        return "hwc"
    if flatten_data_format == "channels_first" and keras_version_tuple(version) >= (2, 2, 3):
        return "hwc"
    return "chw"


def keras_version_tuple(version: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (version or "0").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def keras_same_convention(backend: str | None) -> str:
    """Whose 'same' padding a Keras file's layers used: ``theano`` puts an even kernel's extra pad
    before (Theano 'half' then a crop, keras 2.3.1 theano_backend.py l.2017-2118, proved by
    fixtures/keras_theano k2_cnn_channels_last and k2_functional_residual); every other backend
    follows TensorFlow, which puts it after."""
    return "theano" if normalize_backend(backend) == "theano" else "tensorflow"


def hard_sigmoid_coefficients(model: Model) -> tuple[float, float]:
    """(alpha, beta) of ``clip(alpha * x + beta, 0, 1)``, the source's ``hard_sigmoid``.

    Keras 1 and 2 (Theano's ``T.nnet.hard_sigmoid``, the TensorFlow and CNTK backends, tf.keras 2):
    0.2 x + 0.5.  Keras 3: ``relu6(x + 3) / 6`` (keras/src/backend/*/nn.py), x / 6 + 0.5.  ONNX's
    ``HardSigmoid`` carries its own alpha/beta (the reader keeps them in the layer's attributes).
    """
    major = model.source.details.get("keras_major") or keras_major(model.source.version)
    if not model.source.format.startswith("keras") or major is None:
        raise UnsupportedError(f"the source ({model.source.format}) says hard_sigmoid without saying whose",
                               fix="Convert to a target that keeps the activation's name (keras, npz, raw)")
    return (1.0 / 6.0, 0.5) if major >= 3 else (0.2, 0.5)
