"""Conversion plans: for each canonical tensor, the target's key and the steps from canonical to target.

The canonical plan (:func:`canonical_plan`) keys every tensor ``<layer>.<param>`` in the canonical
(PyTorch/ONNX) layout, so its steps are empty; each target's planner lives in its framework's
folder (``weightport.formats.<framework>``) and adds layout steps built from
:mod:`weightport.core.steps`.  The registry (:mod:`weightport.formats`) says which planner a target
uses; ``weightport explain`` prints a plan together with each tensor's source -> canonical steps.
Planned tensors are immutable: a planner derives a changed one with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from collections.abc import Iterator

from weightport.core.dtypes import is_bfloat16
from weightport.core.errors import UnsupportedError, UsageError
from weightport.core.layout import elementary_view, Layout, materialize, NO_SEMANTICS
from weightport.core.steps import compose_relayouts, Relayout
from weightport.core.blocks import copy_blocks
from weightport.core.model import Layer, Model, Provenance, Tensor, Transform, array_tensor, state_key
from weightport.core.options import WriteOptions
from weightport.core.padding_note import padding_warnings


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its key in the target, its canonical source and the steps to the target layout."""

    key: str
    layer: Layer
    param: str
    tensor: Tensor
    steps: tuple[Transform, ...]
    layout: Layout
    extra: tuple[Tensor, ...] = ()  # more canonical tensors combined with ``tensor``
    combine: str | None = None       # "sum" (one bias from two) or "stack" (two biases in one array)

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.tensor.shape
        if self.combine == "stack":
            shape = (1 + len(self.extra),) + tuple(shape)
        for step in self.steps:
            shape = step.shape(shape)
        return shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.tensor.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def load(self) -> np.ndarray:
        array = self.tensor.load()
        if self.combine == "sum":
            for other in self.extra:
                array = array + other.load()
        elif self.combine == "stack":
            array = np.stack([array] + [other.load() for other in self.extra])
        for step in self.steps:
            array = step.apply(array)
        return np.asarray(materialize(array))  # a plain ndarray, never a np.memmap of the source

    def blocks(self, block_bytes: int = 8 << 20) -> Iterator[np.ndarray]:
        """The target array's C-order bytes as C-contiguous blocks, without materializing the whole array.

        When every step from the source to the target is a rearrangement (the
        common case: kernels, dense matrices) the source array (a memory map
        where the reader can) is seen through one composed view and copied
        block by block, so memory is the source plus two small buffers.
        Otherwise (gate reorders, combined biases) the array is loaded whole.
        Blocks are valid until two more are produced (see :func:`weightport.core.blocks.copy_blocks`).
        """
        chain = None if self.combine else compose_relayouts(tuple(self.tensor.transforms) + tuple(self.steps))
        if chain is None:
            yield self.load()
            return
        view = elementary_view(self.tensor.read(), chain.src, chain.dst, dict(chain.known))
        yield from copy_blocks(view, block_bytes)

    def describe(self) -> list[str]:
        combined = [f"{self.combine} with {', '.join(t.name for t in self.extra)}"] if self.combine else []
        return self.tensor.applied() + combined + [s.describe() for s in self.steps if not s.is_identity()]


@dataclass
class Plan:
    target: str
    tensors: list[PlannedTensor]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # how the output is made, for explain (not warnings)


def plan_by_layer(plan: Plan) -> list[tuple[Layer, list[PlannedTensor]]]:
    """The plan's tensors grouped by layer, layers and tensors in plan order."""
    groups: dict[int, tuple[Layer, list[PlannedTensor]]] = {}
    for item in plan.tensors:
        groups.setdefault(id(item.layer), (item.layer, []))[1].append(item)
    return list(groups.values())


def note_bfloat16_widened(plan: Plan, target: str, hint: str = "") -> None:
    """Warn that ``target`` holds no bfloat16, naming the tensors its writer stores as (exact) float32."""
    keys = [item.key for item in plan.tensors if is_bfloat16(item.dtype)]
    if keys:
        plan.warnings.append(f"{target} has no bfloat16: {', '.join(keys)} written as float32 (exact, every "
                             f"bfloat16 is a float32){hint}")


def renamed(key: str, rename: dict[str, str], patterns: list[tuple[str, str]] | None = None) -> str:
    """The user's name for a canonical key.

    An exact entry of ``rename`` wins, else the longest matching layer prefix;
    then every ``(regex, replacement)`` of ``patterns`` is applied in order.
    """
    if key in rename:
        key = rename[key]
    else:
        layer, _, param = key.rpartition(".")
        while layer:
            if layer in rename:
                key = f"{rename[layer]}.{param}"
                break
            layer, _, tail = layer.rpartition(".")
            param = f"{tail}.{param}"
    for pattern, replacement in patterns or ():
        key = re.sub(pattern, replacement, key)
    return key


def torch_rnn_problem(layer: Layer) -> str | None:
    """Why ``torch.nn.LSTM``/``torch.nn.GRU`` cannot compute the recurrent ``layer`` (None when they can).

    The one rule: torch.nn's RNNs have sigmoid gates, a tanh cell and (GRU) the reset gate applied after
    the recurrent matmul.  A GRU with ``reset_after=False`` or an LSTM/GRU with another activation (Keras
    1/2's default ``hard_sigmoid`` recurrent activation) has weights that load into them and compute
    something else, so the torch target refuses it rather than write a file that runs wrong.
    """
    if layer.kind not in ("lstm", "gru"):
        return None
    cls = f"torch.nn.{layer.kind.upper()}"
    a = layer.attrs
    problems = []
    if layer.kind == "gru" and not a.get("reset_after", True):
        problems.append(f"was trained with reset_after=False, which {cls} cannot compute (it applies the reset "
                        "gate after the recurrent matmul)")
    for attr, default, part in (("recurrent_activation", "sigmoid", "its gates are"),
                                ("activation", "tanh", "its cell is")):
        if a.get(attr) not in (default, None):
            problems.append(f"uses {attr}={a[attr]!r}, which {cls} cannot compute ({part} {default})")
    return f"{layer.kind.upper()} layer {layer.name!r} {' and '.join(problems)}" if problems else None


def refuse_for_torch(layer: Layer) -> None:
    """Refuse, for the torch target, a recurrent layer torch.nn cannot compute (:func:`torch_rnn_problem`)."""
    problem = torch_rnn_problem(layer)
    if problem:
        raise UnsupportedError(problem,
                               fix="Convert to onnx, which computes it, or to keras, npz or raw, which carry it")


def canonical_plan(model: Model, options: WriteOptions, target: str = "torch") -> Plan:
    """Canonical tensors under ``<layer>.<param>`` keys (a PyTorch state_dict), renamed by ``options``.

    For the torch target, refuses a recurrent layer ``torch.nn`` cannot compute (:func:`torch_rnn_problem`);
    adds PyTorch's ``num_batches_tracked`` counter to batch norms that lack it.
    """
    warnings = list(model.warnings)
    planned: list[PlannedTensor] = []
    for layer in model.layers:
        if target == "torch":
            refuse_for_torch(layer)
        for param, tensor in layer.tensors.items():
            key = renamed(state_key(layer.name, param), options.rename, options.rename_patterns)
            planned.append(PlannedTensor(key, layer, param, tensor, (), tensor.layout))
        if layer.kind == "batchnorm" and "running_var" in layer.tensors and "num_batches_tracked" not in layer.tensors:
            key = renamed(state_key(layer.name, "num_batches_tracked"), options.rename, options.rename_patterns)
            counter = array_tensor("num_batches_tracked", np.zeros((), np.int64), Layout(""),
                                   Provenance("(none: PyTorch BatchNorm counter, zero)", ""))
            planned.append(PlannedTensor(key, layer, "num_batches_tracked", counter, (), counter.layout))
    warnings += padding_warnings(model, target)  # worded for the target (core/padding_note.py)
    duplicates = sorted(key for key, count in Counter(p.key for p in planned).items() if count > 1)
    if duplicates:
        raise UsageError(f"two tensors map to the same key: {', '.join(duplicates)}", fix="Fix the {opt:rename} map")
    return Plan(target, planned, warnings)


def with_semantics(plan: Plan, semantics: str | None) -> Plan:
    """``plan`` with every convolution kernel flipped into ``semantics`` (None: unchanged)."""
    if semantics is None:
        return plan
    return replace(plan, tensors=[with_kernel_semantics(item, semantics) for item in plan.tensors])


def with_kernel_semantics(item: PlannedTensor, semantics: str) -> PlannedTensor:
    """``item`` with one more step flipping its kernel into ``semantics`` (unchanged if not a kernel)."""
    if item.layout.semantics in (NO_SEMANTICS, semantics):
        return item
    target = Layout(item.layout.pattern, semantics)
    return replace(item, steps=item.steps + (Relayout(item.layout, target),), layout=target)
