"""A ``--rename`` entry that renames nothing is almost always a typo: find such entries.

An exact entry matches when it is a canonical key (``<layer>.<param>``) or a layer prefix of one
(``conv2d`` matches ``conv2d.weight``; ``block.conv`` matches ``block.conv.weight``), as
:func:`weightport.core.plan.renamed` applies it.  A ``(regex, replacement)`` pair matches when
``re.search`` finds it in some key after the exact entries were applied.
"""

from __future__ import annotations

import re
from typing import Iterable

from weightport.core.errors import UsageError, option
from weightport.core.model import Model
from weightport.core.plan import renamed

EXTRA_KEYS = {"batchnorm": ("num_batches_tracked",)}  # keys a plan adds that the source does not hold


def canonical_keys(model: Model) -> list[str]:
    """Every key a plan can rename: the source's tensors and the counters plans add."""
    keys = [key for key, _, _ in model.state_keys()]
    return keys + [f"{layer.name}.{extra}" for layer in model.layers for extra in EXTRA_KEYS.get(layer.kind, ())]


def prefixes(key: str) -> Iterable[str]:
    """``a.b.c`` -> ``a.b.c``, ``a.b``, ``a``."""
    parts = key.split(".")
    return (".".join(parts[:end]) for end in range(len(parts), 0, -1))


def unmatched_renames(model: Model, rename: dict[str, str] | None,
                      patterns: list[tuple[str, str]] | None = None) -> list[str]:
    """The entries of ``rename`` and the regexes of ``patterns`` that rename no key of ``model``."""
    keys = canonical_keys(model)
    names = {prefix for key in keys for prefix in prefixes(key)}
    missing = [entry for entry in rename or {} if entry not in names]
    after = [renamed(key, dict(rename or {})) for key in keys]
    missing += [pattern for pattern, _ in patterns or () if not any(re.search(pattern, key) for key in after)]
    return missing


def check_renames(model: Model, rename: dict[str, str] | None, patterns: list[tuple[str, str]] | None,
                  strict: bool) -> list[str]:
    """Warnings for rename entries that match nothing; with ``strict`` a :class:`UsageError` instead."""
    missing = unmatched_renames(model, rename, patterns)
    if not missing:
        return []
    listed = ", ".join(repr(entry) for entry in missing)
    weighted = [layer.name for layer in model.weighted_layers()]
    layers = ", ".join(weighted[:6]) + (", ..." if len(weighted) > 6 else "")
    problem = f"rename entr{'y' if len(missing) == 1 else 'ies'} {listed} match{'es' if len(missing) == 1 else ''} " \
              f"no layer or tensor key of the source (its weighted layers: {layers})"
    if strict:
        raise UsageError(problem, fix=f"Correct the {option('rename')} entries (weightport inspect lists the names), "
                                      f"or drop {option('strict', True)}")
    return [problem + "; ignored"]
