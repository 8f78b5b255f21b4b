"""Command-line options for Keras files that lack what weightport needs to port them exactly:
``--layer-kinds`` (weights-only files), ``--keep-unknown`` (custom layers), ``--input-shape``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from weightport.core.errors import UsageError

LAYER_KINDS_FIX = 'Write a JSON object of layer name -> Keras class, such as {"rnn_1": "LSTM", "att": "Dense"}'


def add_keras_read_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer-kinds", metavar="MAP.json",
                        help="JSON object: layer name -> Keras class, for a weights-only Keras file whose "
                             "layers cannot be told from their names and weights")
    parser.add_argument("--keep-unknown", action="store_true",
                        help="copy the tensors of layers weightport cannot map (custom layers) unchanged "
                             "under their own names; they are listed in the warnings and the output metadata")
    parser.add_argument("--input-shape", metavar="D1,D2,...",
                        help="the model's input shape without the batch axis, in the source's layout "
                             "(e.g. 64,64,1 for a channels-last Keras file, 3,12,12 for an --arch torch module), "
                             "when the file does not record it; an --arch module is traced on one such sample")


def keras_read_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"layer_kinds": load_layer_kinds(getattr(args, "layer_kinds", None)),
            "keep_unknown": bool(getattr(args, "keep_unknown", False)),
            "input_shape": parse_shape(getattr(args, "input_shape", None))}


def load_layer_kinds(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except (OSError, ValueError) as error:
        raise UsageError(f"--layer-kinds file cannot be read ({error})", path=path, fix=LAYER_KINDS_FIX) from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise UsageError("--layer-kinds must be a JSON object of strings", path=path, fix=LAYER_KINDS_FIX)
    return mapping


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(size <= 0 for size in shape):
        raise UsageError(f"--input-shape {text!r} is not a list of positive sizes",
                         fix="Give the sizes without the batch axis, e.g. --input-shape 64,64,1")
    return shape
