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

from weightport.api import ConversionResult, convert, detect, load, save, validate
from weightport.core.errors import WeightportError
from weightport.core.model import Layer, Model, Tensor
from weightport.core.version import __version__

__all__ = ["ConversionResult", "Layer", "Model", "Tensor", "WeightportError", "__version__", "convert", "detect",
           "load", "save", "validate"]
