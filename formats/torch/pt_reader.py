"""PyTorch ``.pt`` state_dict files (``torch.save``), read with ``torch.load(weights_only=True)``.

torch is imported only here, only when such a file is read or written.
Keys follow the torch plan (``<layer>.<param>``); layouts are canonical.
"""

from __future__ import annotations

import zipfile


from weightport.core.dtypes import tensor_to_numpy
from weightport.core.errors import BadInputError, MissingDependencyError
from weightport.core.layout import Layout
from weightport.core.model import Layer, Model, Provenance, SourceInfo, array_tensor
from weightport.core.options import ReadOptions

NAME = "torch_pt"
DESCRIPTION = "PyTorch state_dict saved with torch.save (.pt, .pth)"
EXTENSIONS = (".pt", ".pth")


def import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch", "Reading or writing .pt files") from None
    return torch


def sniff(path: str) -> bool:
    """A torch.save file is a zip archive holding ``*/data.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read(path: str, options: ReadOptions) -> Model:
    """Read a state_dict with torch.load(weights_only=True): no code from the file runs."""
    torch = import_torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        raise BadInputError(f"torch.load(weights_only=True) refused the file ({str(error).splitlines()[0]})",
                            path=path, fix="Only plain state_dicts of tensors can be read") from None
    if not isinstance(state, dict):
        raise BadInputError("the file does not hold a state_dict (a dict of tensors)", path=path,
                            fix="Save model.state_dict(), not the model")
    model = Model(SourceInfo(path, NAME, str(torch.__version__), None))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        array = tensor_to_numpy(torch, value)
        layer_name, _, param = key.rpartition(".")
        layer_name = layer_name or key
        try:
            layer = model.layer(layer_name)
        except KeyError:
            layer = Layer(layer_name, "other")
            model.layers.append(layer)
        pattern = " ".join(f"a{k}" for k in range(array.ndim))
        layer.tensors[param or key] = array_tensor(param or key, array, Layout(pattern), Provenance(key, pattern))
    return model
