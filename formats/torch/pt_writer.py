"""PyTorch ``.pt`` output (``--to torch``, ``.pt``/``.pth``): the torch plan's tensors as a state_dict saved
with ``torch.save``.
"""

from __future__ import annotations



from weightport.core.atomic import atomic_path
from weightport.core.dtypes import numpy_to_tensor
from weightport.core.errors import OutputError
from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.formats.torch.plan import torch_plan

from weightport.formats.torch.pt_reader import import_torch

def write(model: Model, path: str, options: WriteOptions) -> list[str]:
    """torch.save of a state_dict that torch.load(weights_only=True) accepts."""
    torch = import_torch()
    plan = torch_plan(model, options)
    state = {}
    for item in plan.tensors:
        array = item.load()
        state[item.key] = numpy_to_tensor(torch, array)
    with atomic_path(path, options.force) as temporary, open(temporary, "wb") as handle:
        try:
            torch.save(state, handle)  # a handle, not the path: torch names the archive's folder after a path
        except (OSError, RuntimeError) as error:  # torch wraps a failed write (ENOSPC, EFBIG) in a RuntimeError
            raise OutputError(f"cannot write the file ({str(error).splitlines()[0] if str(error) else error!r})",
                              path=path, fix="Check free space, quotas and permissions") from None
    return plan.warnings
