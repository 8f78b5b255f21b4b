"""The state_dict inside a checkpoint as people save it.

``torch.save`` is given anything: a bare ``state_dict``, or a training checkpoint such as
``{'epoch': 12, 'state_dict': ..., 'optimizer': ...}`` (Lightning), ``{'model_state': ...}``,
``{'model': ..., 'ema': ...}``, ``{'net': ...}``.  :func:`find_state_dict` picks the state dict:

* ``--key NAME`` (``key=`` in the API) names the entry; an unknown name is refused listing the entries
  that hold tensors.
* A dict whose values are tensors is the state dict itself.
* Otherwise the entries that are dicts of tensors are the candidates: the only one, or else the only one
  with a conventional name (:data:`CONVENTIONAL`).  Anything else is ambiguous: refused (exit 2) listing
  the candidates and the ``--key`` that chooses.
* Keys that all start with ``module.`` (``nn.DataParallel``/``DistributedDataParallel``) lose it.

Every choice is said in a note (a warning line) so a user sees which entry was read.  Keys are kept
exactly otherwise: ``cls_token`` stays ``cls_token``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightport.core.errors import BadInputError, UsageError

CONVENTIONAL = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module",
                "weights", "params")
PARALLEL_PREFIX = "module."


def tensor_entries(value: Mapping, torch: Any) -> list[str]:
    return [str(key) for key, item in value.items() if isinstance(item, torch.Tensor)]


def candidates(checkpoint: Mapping, torch: Any) -> list[str]:
    """The entries of ``checkpoint`` that are dicts holding tensors."""
    return [str(key) for key, value in checkpoint.items()
            if isinstance(value, Mapping) and tensor_entries(value, torch)]


def choose(checkpoint: Mapping, torch: Any, key: str | None, path: str) -> tuple[Mapping, str | None]:
    """The state dict and the entry it came from (None: the file is the state dict itself)."""
    found = candidates(checkpoint, torch)
    listed = ", ".join(repr(name) for name in found) or "none"
    if key is not None:
        if key not in checkpoint or not isinstance(checkpoint[key], Mapping):
            raise UsageError(f"the checkpoint has no state dict under {{opt:key}} {key!r} (entries holding tensors: "
                             f"{listed})", path=path, fix="Give {opt:key} one of the entries listed")
        return checkpoint[key], key
    direct = tensor_entries(checkpoint, torch)
    if direct and not found:
        return checkpoint, None
    if not direct and len(found) == 1:
        return checkpoint[found[0]], found[0]
    conventional = [name for name in found if name in CONVENTIONAL]
    if not direct and len(conventional) == 1:
        return checkpoint[conventional[0]], conventional[0]
    if not direct and not found:
        raise BadInputError("the file holds no tensors (neither a state_dict nor a checkpoint holding one)",
                            path=path, fix="Save model.state_dict() with torch.save")
    top = ["(top level)"] if direct else []
    raise UsageError(f"the checkpoint holds several state dicts: {', '.join(top + [repr(n) for n in found])}",
                     path=path, fix="Choose one with {opt:key=NAME}")


def strip_parallel(state: Mapping) -> tuple[dict, bool]:
    """``state`` without the ``module.`` prefix DataParallel adds, when every key has it."""
    keys = [key for key in state if isinstance(key, str)]
    if keys and len(keys) == len(state) and all(key.startswith(PARALLEL_PREFIX) for key in keys):
        return {key[len(PARALLEL_PREFIX):]: value for key, value in state.items()}, True
    return dict(state), False


def find_state_dict(loaded: Any, torch: Any, key: str | None, path: str) -> tuple[dict, list[str]]:
    """The tensors' state dict inside what ``torch.load`` returned, and the notes saying how it was found."""
    if not isinstance(loaded, Mapping):
        raise BadInputError(f"the file holds a {type(loaded).__name__}, not a state_dict (a dict of tensors)",
                            path=path, fix="Save model.state_dict(), not the model")
    state, entry = choose(loaded, torch, key, path)
    chosen_by = "" if key is not None else "; --key (key= from Python) chooses another"
    notes = [] if entry is None else [f"read the state dict under checkpoint key {entry!r} (of "
                                      f"{', '.join(repr(str(k)) for k in loaded)}){chosen_by}"]
    state, stripped = strip_parallel(state)
    if stripped:
        notes.append("removed the 'module.' prefix nn.DataParallel adds to every key")
    skipped = [str(name) for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if skipped:
        shown = ", ".join(repr(name[:40]) for name in skipped[:6]) + (" ..." if len(skipped) > 6 else "")
        notes.append(f"kept only tensors: {len(skipped)} non-tensor entr{'y' if len(skipped) == 1 else 'ies'} "
                     f"skipped ({shown})")
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}, notes
