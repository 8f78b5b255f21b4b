"""``--strict-against module.py:Class``: the torch output must match a user's module key for key.

The user's own module file is imported (it is their code, named on their
command line) and ``Class()`` is instantiated with no arguments; its
``state_dict`` keys and shapes are compared with the plan before anything is
written.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

from weightport.core.errors import UsageError

_IMPORT_LOCK = threading.Lock()


def load_module_class(spec: str):
    """The class named by ``path/to/module.py:ClassName``."""
    path, _, name = spec.rpartition(":")
    if not path or not name or not path.endswith(".py"):
        raise UsageError(f"{{opt:strict_against}} {spec!r} is not MODULE.py:CLASS", fix="Write e.g. models/net.py:Net")
    if not os.path.isfile(path):
        raise UsageError("module file not found", path=path, fix="Check the path given to {opt:strict_against}")
    module_spec = importlib.util.spec_from_file_location(f"weightport_strict_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(os.path.abspath(path))
    # sys.path is the process's: one user module is imported at a time, its folder first meanwhile
    # (so it can import its neighbours), and exactly that entry is removed afterwards.
    with _IMPORT_LOCK:
        sys.path.insert(0, folder)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            raise UsageError(f"importing the module failed ({type(error).__name__}: {error})", path=path,
                             fix="Make the module importable on its own") from None
        finally:
            sys.path.remove(folder)
    if not hasattr(module, name):
        raise UsageError(f"the module has no class {name!r}", path=path, fix="Check the class name")
    return getattr(module, name)


def check_against(spec: str, plan) -> None:
    """Raise :class:`UsageError` listing every missing, unexpected or differently shaped key."""
    cls = load_module_class(spec)
    try:
        state = cls().state_dict()
    except Exception as error:
        raise UsageError(f"{cls.__name__}() could not be built with no arguments ({error})",
                         fix="Give a class whose constructor needs no arguments") from None
    ours = {p.key: tuple(p.shape) for p in plan.tensors}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    problems = ([f"missing {k}" for k in theirs if k not in ours] + [f"unexpected {k}" for k in ours if k not in theirs]
                + [f"{k}: {ours[k]} vs {theirs[k]}" for k in ours if k in theirs and ours[k] != theirs[k]])
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise UsageError(f"the output does not match {cls.__name__}: {shown}",
                         fix="Map names with {opt:rename}, or check the architecture")
