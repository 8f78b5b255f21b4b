"""weightport: port trained weights between frameworks whose "convolution" means different things.

Core API::

    load(path, **options) -> Model
    save(model, path, to=...) -> ConversionResult
    convert(src, dst, **options) -> ConversionResult

Only numpy and h5py are imported here; torch, tensorflow and onnx are imported
by the formats and checks that need them.
"""

from weightport.api import ConversionResult, convert, load, save
from weightport.core.errors import WeightportError
from weightport.core.model import Layer, Model, Tensor

from weightport.core.version import __version__

__all__ = ["ConversionResult", "Layer", "Model", "Tensor", "WeightportError", "convert", "load", "save",
           "__version__"]
