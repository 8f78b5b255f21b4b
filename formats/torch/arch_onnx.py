"""``--to onnx`` of a state dict read with ``--arch``: the user's own module, holding the weights,
exported with ``torch.onnx.export`` (opset 17, batch axis dynamic), so the graph is exactly the
module's ``forward``.  Input ``input``; outputs ``output`` (and ``output2``, ... when it returns several).
"""

from __future__ import annotations

import io
import threading
import warnings

from weightport.core.atomic import atomic_path
from weightport.core.errors import OutputError, UnsupportedError
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.formats.torch.arch import user_module
from weightport.formats.torch.pt_reader import import_torch

EXPORT_LOCK = threading.Lock()  # torch.onnx.export keeps global state: one export at a time


def output_names(count: int) -> list[str]:
    return ["output"] + [f"output{k}" for k in range(2, count + 1)]


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    torch = import_torch()
    module = user_module(model)
    first = model.layers[0] if model.layers else None
    if first is None or first.kind != "input" or first.output_shape is None:
        raise UnsupportedError("the {opt:arch} module was not traced, so its input shape is unknown",
                               path=model.source.path, fix="Give {opt:input_shape=C,H,W}")
    example = torch.rand((1,) + tuple(first.output_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = module(example)
    count = len(result) if isinstance(result, (tuple, list)) else 1
    names = output_names(count)
    buffer = io.BytesIO()
    with EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=names, dynamic_axes={name: {0: "batch"} for name in ["input"] + names})
    with atomic_path(path, options.force) as temporary, open(temporary, "wb") as handle:
        try:
            handle.write(buffer.getvalue())
        except OSError as error:
            raise OutputError(f"cannot write the file ({error.strerror})", path=path,
                              fix="Check free space, quotas and permissions") from None
    return list(model.warnings)
