"""The torch target's plan: the canonical plan (PyTorch is the canonical convention), checked against
the user's own module with ``--strict-against``."""

from __future__ import annotations

from weightport.core.model import Model
from weightport.core.options import WriteOptions
from weightport.core.plan import Plan, canonical_plan
from weightport.formats.torch.strict import check_against


def torch_plan(model: Model, options: WriteOptions) -> Plan:
    """A PyTorch state_dict: canonical tensors under ``<layer>.<param>`` keys (after ``--rename``)."""
    plan = canonical_plan(model, options, "torch")
    if options.strict_against:
        check_against(options.strict_against, plan)
    return plan
