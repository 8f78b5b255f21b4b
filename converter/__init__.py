"""weightport: port trained weights between frameworks whose "convolution" means different things.

The API::

    load(path, **options) -> Model
    save(model, path, to=...) -> ConversionResult
    convert(src, dst, **options) -> ConversionResult
    validate(src, converted, input=..., expected=...) -> Report
    detect(src, input, expected) -> Detection

Only numpy and h5py are imported here; torch, tensorflow and onnx are imported
by the formats and checks that need them.  The package's map: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from weightport.core.version import __version__

if TYPE_CHECKING:
    from weightport.api import ConversionResult, convert, detect, load, save, validate
    from weightport.core.errors import WeightportError
    from weightport.core.model import Layer, Model, Tensor

__all__ = ["ConversionResult", "Layer", "Model", "Tensor", "WeightportError", "__version__", "convert", "detect",
           "load", "save", "validate"]

# Each name of the API is imported on first use (PEP 562), so `weightport --version` and the command line's
# start do not pay for the whole library.
_HOMES = {"ConversionResult": "weightport.api", "convert": "weightport.api", "detect": "weightport.api",
          "load": "weightport.api", "save": "weightport.api", "validate": "weightport.api",
          "WeightportError": "weightport.core.errors", "Layer": "weightport.core.model",
          "Model": "weightport.core.model", "Tensor": "weightport.core.model"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'weightport' has no attribute {name!r}")
