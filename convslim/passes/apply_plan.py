"""Apply a plan: swap each planned conv module for the replacement its form builds from the trained weights.

The swap is by module path, so it works the same on a GraphModule (the node keeps its target; the new module
is traced through on export) and on the module-swap fallback. The input module is copied first.

Example:
    >>> compressed = apply_plan(folded, plan)
"""

from __future__ import annotations

import copy

from torch import nn
from tqdm.auto import tqdm

from convslim.convert import get_form
from convslim.core import Plan, set_submodule
from convslim.errors import PlanError


def apply_plan(
    module: nn.Module, plan: Plan, progress: bool = False, notes: list[str] | None = None
) -> nn.Module:
    """Return a copy of ``module`` with every rewritten layer of ``plan`` replaced.

    After the swaps, each form used gets one ``finalize`` call for graph-level work; its notes go to ``notes``.
    """
    module = copy.deepcopy(module)
    rewritten = plan.rewritten
    for decision in tqdm(rewritten, desc=f"rewriting to {plan.form}", disable=not progress, leave=False):
        conv = _find_conv(module, decision.name)
        if list(conv.weight.shape) != decision.weight_shape:
            raise PlanError(
                f"layer {decision.name}: the plan expects weight shape {decision.weight_shape}, the model has "
                f"{list(conv.weight.shape)}; make the plan on this model"
            )
        replacement = get_form(decision.form).convert(conv, decision.setting)
        set_submodule(module, decision.name, replacement)
    notes = [] if notes is None else notes
    for form_name in dict.fromkeys(d.form for d in rewritten):
        decisions = [d for d in rewritten if d.form == form_name]
        module = get_form(form_name).finalize(module, decisions, notes)
    if hasattr(module, "recompile"):
        module.recompile()
    return module


def _find_conv(module: nn.Module, name: str) -> nn.Module:
    try:
        conv = module.get_submodule(name)
    except AttributeError:
        raise PlanError(
            f"layer {name!r} of the plan is not in the model; make the plan on this model"
        ) from None
    if not isinstance(conv, nn.Conv2d):
        raise PlanError(
            f"layer {name!r} is a {type(conv).__name__}, not a Conv2d; make the plan on this model"
        )
    return conv
