"""Apply a plan: swap each planned conv module for the replacement its form builds from the trained weights.

The swap is by module path, so it works the same on a GraphModule (the node keeps its target; the new module
is traced through on export) and on the module-swap fallback. Neither the input module nor the plan is changed:
graph-level work may fix more of a setting than the plan said (octave records its channel sets), and that comes
back as a new plan, the plan *as built*, which is what reports and saved plans must show.

Example:
    >>> compressed = apply_plan(folded, plan)
    >>> compressed, as_built = rewrite(folded, plan)   # as_built: plan with what finalize fixed
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import NamedTuple

from torch import nn
from tqdm.auto import tqdm

from convslim.convert import get_form
from convslim.core import Plan, set_submodule
from convslim.errors import PlanError
from convslim.passes.form_passes import run_graph_pass


class Rewritten(NamedTuple):
    """The compressed copy and the plan as built (a new object; the plan given is never changed)."""

    model: nn.Module
    plan: Plan


def apply_plan(
    module: nn.Module, plan: Plan, progress: bool = False, notes: list[str] | None = None
) -> nn.Module:
    """Return a copy of ``module`` with every rewritten layer of ``plan`` replaced (see ``rewrite``)."""
    return rewrite(module, plan, progress, notes).model


def rewrite(
    module: nn.Module, plan: Plan, progress: bool = False, notes: list[str] | None = None
) -> Rewritten:
    """A copy of ``module`` with every rewritten layer of ``plan`` replaced, and the plan as built.

    After the swaps, each form used gets its ``graph_pass`` (by name, ``form_passes``) and then one ``finalize``
    call; their notes go to ``notes`` and the decisions they return replace the plan's in the plan as built.
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
    built = {}
    for form_name in dict.fromkeys(d.form for d in rewritten):
        form = get_form(form_name)
        decisions = [d for d in rewritten if d.form == form_name]
        if form.graph_pass is not None:
            module, decisions = run_graph_pass(form.graph_pass, module, decisions, notes)
        module, done = _finalized(form.finalize(module, decisions, notes), form_name)
        built.update((d.name, d) for d in done)
    if hasattr(module, "recompile"):
        module.recompile()
    as_built = replace(plan, layers=[built.get(d.name, d) for d in plan.layers])
    return Rewritten(module, copy.deepcopy(as_built))


def _finalized(result, form_name: str) -> tuple[nn.Module, list]:
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise TypeError(
            f"form {form_name!r}: finalize must return (model, decisions as built), got {type(result).__name__}; "
            "return (module, decisions) when the graph work fixes nothing more"
        )
    return result


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
