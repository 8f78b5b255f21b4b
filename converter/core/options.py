"""Options that readers and writers take, as plain dataclasses (the CLI and the API fill them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReadOptions:
    """How to read a source.

    ``assume_backend``: the Keras backend to assume when the file records none
    (Keras 1) or to override it.  ``source_semantics``: force the semantics of
    every convolution kernel (``convolution`` or ``correlation``).  ``spec``:
    a JSON/YAML file naming the arrays of an architecture-less pickle.
    ``key``: the entry of a PyTorch checkpoint dict holding the state dict.
    ``arch``: ``module.py:Class`` or ``module.py:factory``, the user's own torch module that gives a
    state dict its architecture;
    ``layer_kinds``: layer name -> Keras class, for a weights-only Keras file whose layers cannot be told
    from their names and weights.  ``keep_unknown``: copy the tensors of layers weightport cannot map
    (custom layers) unchanged under their own names.  ``input_shape``: the model's input shape (without
    the batch axis, in the source's layout) when the file does not record it; an ``arch`` module is traced
    on a batch of one of it.
    """

    assume_backend: str | None = None
    source_semantics: str | None = None
    spec: str | None = None
    key: str | None = None
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    strict: bool = False  # refuse, instead of warning, when a source holds tensors of an op weightport does not know
    layer_kinds: dict[str, str] = field(default_factory=dict)
    keep_unknown: bool = False


@dataclass
class WriteOptions:
    """How to write a target.

    ``target_semantics``: semantics the target's kernels must have (defaults
    per target).  ``rename``: map from canonical keys (or layer names) to the
    user's names; ``rename_patterns``: ``(regex, replacement)`` pairs applied
    after it.  ``strict_against``: ``module.py:Class`` whose state_dict keys and
    shapes the torch output must match exactly.
    ``force``: overwrite an existing output.  ``dtype``, ``byte_order``,
    ``layout``: for the plain-array target.  ``emit_forward``: also write the
    model's forward pass in Java (java target); ``java_package``,
    ``java_class``: the generated Java's package and class name (java target).  ``quiet``: no progress output.
    ``template``: an ONNX model whose weights the onnx target replaces.
    ``max_shard_size``: bytes of tensor data per safetensors shard (torch target, sharded output).
    """

    target_semantics: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    rename_patterns: list[tuple[str, str]] = field(default_factory=list)
    strict_against: str | None = None
    force: bool = False
    dtype: str | None = None
    byte_order: str | None = None
    layout: str | None = None
    emit_forward: bool = False
    java_package: str | None = None
    java_class: str | None = None
    quiet: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    max_shard_size: int | None = None
