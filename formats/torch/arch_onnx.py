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

OPSET = 17
EXPORT_LOCK = threading.Lock()  # torch.onnx.export keeps global state: one export at a time


def output_names(count: int) -> list[str]:
    return ["output"] + [f"output{k}" for k in range(2, count + 1)]


def traced_input_shape(model: Model) -> tuple[int, ...]:
    """The input shape (without the batch axis) the ``--arch`` module was traced with; refused without one."""
    first = model.layers[0] if model.layers else None
    if first is None or first.kind != "input" or first.output_shape is None:
        raise UnsupportedError("the {opt:arch} module was not traced, so its input shape is unknown",
                               path=model.source.path, fix="Give {opt:input_shape=C,H,W}")
    return tuple(first.output_shape)


def graph_note(model: Model) -> str:
    """How :func:`write` makes the graph, for ``explain`` (refused as the write is without an input shape)."""
    shape = ", ".join(["N"] + [str(n) for n in traced_input_shape(model)])
    return (f"graph: the {{opt:arch}} module {model.source.details.get('arch')} exported by torch.onnx.export (opset "
            f"{OPSET}) on an input ({shape}), batch axis dynamic; its initializers are these tensors as torch.onnx "
            "names them (it may rename a parameter it reshapes, and writes an LSTM/GRU's as ONNX W, R, B in gate "
            "order i,o,f,c)")


def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    torch = import_torch()
    module = user_module(model)
    example = torch.rand((1,) + traced_input_shape(model), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = module(example)
    count = len(result) if isinstance(result, (tuple, list)) else 1
    names = output_names(count)
    buffer = io.BytesIO()
    with EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=names, dynamic_axes={name: {0: "batch"} for name in ["input"] + names})
    with atomic_path(path, options.force) as temporary, open(temporary, "wb") as handle:
        try:
            handle.write(buffer.getvalue())
        except OSError as error:
            raise OutputError(f"cannot write the file ({error.strerror})", path=path,
                              fix="Check free space, quotas and permissions") from None
    return list(model.warnings)
