"""Keras 3 running a whole saved Keras model file, as the source's own framework computes it: the
reference of a validation without recorded outputs (weightport.checks.source_reference).

Nothing of weightport's reading or conversion code is used: the file is loaded by Keras itself
(``keras.saving.load_model``, safe mode), or, for a Keras 2 / tf.keras ``.h5`` whose config holds
arguments Keras 3 no longer takes (with the value that was their only behaviour: ``groups=1`` on a
depthwise or transposed conv, ``time_major=False`` on an RNN, see :data:`RETIRED_ARGUMENTS`), rebuilt by
Keras from that stored config and filled by Keras's own legacy HDF5 weight loader.  A model holding a
Lambda layer (code) is never loaded: weightport never runs code from a file.  Runs on the input in the
source's own layout (channels-last for a channels-last model) and returns the model's output as Keras
gives it.  ``NotImplementedError`` carries the reason when Keras cannot run the file.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ANY = object()  # an argument the layer never used, whatever its value
UNUSED_BY_SEPARABLE = {"groups": 1, "kernel_initializer": ANY, "kernel_regularizer": ANY, "kernel_constraint": ANY}
# Keras 2 arguments Keras 3 refuses, and the value under which dropping them changes nothing (tf.keras's
# separable convs inherited a kernel initializer, regularizer and constraint they never used).
RETIRED_ARGUMENTS: dict[str, dict[str, Any]] = {
    "DepthwiseConv1D": {"groups": 1}, "DepthwiseConv2D": {"groups": 1},
    "SeparableConv1D": UNUSED_BY_SEPARABLE, "SeparableConv2D": UNUSED_BY_SEPARABLE,
    "Conv1DTranspose": {"groups": 1}, "Conv2DTranspose": {"groups": 1}, "Conv3DTranspose": {"groups": 1},
    "LSTM": {"time_major": False}, "GRU": {"time_major": False}, "SimpleRNN": {"time_major": False},
}
CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")


def layer_classes(config: Any) -> list[str]:
    """Every ``class_name`` in a Keras config, nested models and wrapped layers included."""
    if isinstance(config, dict):
        found = [config["class_name"]] if isinstance(config.get("class_name"), str) else []
        return found + [name for value in config.values() for name in layer_classes(value)]
    if isinstance(config, list):
        return [name for value in config for name in layer_classes(value)]
    return []


def without_retired_arguments(config: Any) -> Any:
    """A copy of ``config`` without the arguments of :data:`RETIRED_ARGUMENTS` where they hold their one value."""
    if isinstance(config, list):
        return [without_retired_arguments(value) for value in config]
    if not isinstance(config, dict):
        return config
    cleaned = {key: without_retired_arguments(value) for key, value in config.items()}
    retired = RETIRED_ARGUMENTS.get(cleaned.get("class_name", ""), {})
    inner = cleaned.get("config")
    if retired and isinstance(inner, dict):
        cleaned["config"] = {k: v for k, v in inner.items() if not (k in retired and retired[k] in (ANY, v))}
    return cleaned


def stored_config(path: str) -> dict | None:
    """The ``model_config`` a legacy ``.h5`` carries, or a ``.keras`` archive's ``config.json`` (None for a
    weights-only file)."""
    import zipfile

    import h5py
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")) if "config.json" in archive.namelist() else None
    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get("model_config")
    if raw is None:
        return None
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))


def refuse_code(path: str, config: dict | None) -> None:
    code = sorted(set(layer_classes(config)) & set(CODE_LAYERS)) if config else []
    if code:
        raise NotImplementedError(f"the model holds {', '.join(code)} layers (code), and weightport never runs "
                                  "code from a file")


def rebuilt(path: str, config: dict):
    """The model Keras builds from the stored config (retired arguments dropped), with its own legacy
    HDF5 weight loader filling it, as ``keras.saving.load_model`` does for an ``.h5`` (safe mode)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format, saving_options, saving_utils
    from keras.src.saving.serialization_lib import SafeModeScope
    with saving_options.keras_option_scope(use_legacy_config=True), SafeModeScope(True):
        model = saving_utils.model_from_config(without_retired_arguments(config), custom_objects={})
        with h5py.File(path, "r") as handle:
            legacy_h5_format.load_weights_from_hdf5_group(handle["model_weights"], model)
    return model


def load_keras_model(path: str):
    """The saved model as Keras 3 loads it (or rebuilds it from its stored config); NotImplementedError
    with the reason when it cannot."""
    import h5py
    import keras
    config = stored_config(path)  # read first: a model holding code is refused before Keras sees it
    refuse_code(path, config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras refused the file as it is: rebuild from its config, or give up
        first = error
    if config is None or not h5py.is_hdf5(path):  # only a legacy .h5 can be rebuilt from its config
        raise NotImplementedError(f"Keras 3 cannot load it ({type(first).__name__}: {last_line(first)})")
    try:
        return rebuilt(path, config)
    except Exception as error:
        raise NotImplementedError(f"Keras 3 cannot rebuild its architecture ({type(error).__name__}: "
                                  f"{last_line(error)})") from None


def last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:200]


def run_keras_file(path: str, x: np.ndarray, details: dict[str, Any] | None = None) -> np.ndarray:
    """The model saved in ``path`` run by Keras 3 on ``x`` (the source's own layout), its output as
    Keras gives it.  A model with several inputs or outputs is refused (NotImplementedError)."""
    model = load_keras_model(path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotImplementedError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                  "the check runs one of each")
    with warnings.catch_warnings():  # Keras 3 warns when a tf.keras model's one input comes as a bare tensor
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(model(x, training=False))
