"""Shared types, FX helpers and the output folder (``outputs``: checks, staging, atomic writes): the leaf layer
every other room may import. It imports nothing of convslim except ``convslim.errors`` (itself a leaf), so no
import cycle can run through it.

Example:
    >>> from convslim.core import ConvSite, Plan, LayerDecision, Prepared, set_submodule
"""

from convslim.core.fx import delete_submodule, parent_of, set_submodule
from convslim.core.plan import PLAN_VERSION, LayerDecision, Plan, cache_summary
from convslim.core.prepared import Prepared, TracedModel
from convslim.core.regroup import Regroupable
from convslim.core.sites import ConvSite, Cost, dense_cost, no_saving_reason

__all__ = [
    "PLAN_VERSION",
    "ConvSite",
    "Cost",
    "LayerDecision",
    "Plan",
    "Prepared",
    "Regroupable",
    "TracedModel",
    "cache_summary",
    "delete_submodule",
    "dense_cost",
    "no_saving_reason",
    "parent_of",
    "set_submodule",
]
