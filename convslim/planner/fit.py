"""A plan applied to a model: checked against it, its derived numbers recomputed from it.

A plan file is untrusted input (edited by hand, or made for another model). ``fit_plan`` refuses a plan whose
layers are not exactly the model's convs (naming the ones that differ, both ways), checks each setting with its
form's own option checks (``Form.checked_setting``) and asks the form whether it takes the conv at that setting
(``supports``; a setting that merely saves nothing is built as asked). The setting is recorded as the form builds
it (``Form.as_built``: a rank above the conv's maximum is built at the maximum), and everything that depends on
it (params and MACs before and after) is recomputed from the model with ``decide``, as the uniform planner
computes it; nothing derived is read from the file.

Example:
    >>> plan = fit_plan(Plan.read("plan.json"), prepared, "plan.json")
    >>> compressed, as_built = rewrite(prepared.traced.module, plan)
"""

from __future__ import annotations

from dataclasses import replace

from convslim.convert import FORMS
from convslim.core import ConvSite, LayerDecision, Plan, Prepared
from convslim.core.sites import NO_SAVING
from convslim.errors import PlanError
from convslim.planner.uniform import decide

SHOWN = 5  # layer names listed in a message before "and N more"


def fit_plan(plan: Plan, prepared: Prepared, source: str = "the plan") -> Plan:
    """``plan`` checked against ``prepared`` and rebuilt from it (a new plan; ``plan`` is left unchanged):
    every conv of the model in the plan and no other layer, each setting checked, every cost recomputed.
    Problems are ``PlanError``s naming ``source``, the layer and what to do."""
    sites = {s.name: s for s in prepared.sites}
    unconvertible = prepared.traced.unconvertible
    _check_same_layers(plan, list(sites), list(unconvertible), source)
    for decision in plan.rewritten:  # the commonest mistake first: a plan made at another --input-shape
        site = sites.get(decision.name)
        if site is not None and decision.in_shape != list(site.in_shape):
            raise PlanError(
                f"{source} layer {decision.name}: planned for input {decision.in_shape}, the model gives "
                f"{list(site.in_shape)}; plan again with this --input-shape"
            )
    layers = []
    for decision in plan.layers:
        where = f"{source} layer {decision.name}"
        if decision.name in unconvertible:
            if decision.form is not None:
                raise PlanError(f"{where}: cannot be rewritten ({unconvertible[decision.name]})")
            layers.append(LayerDecision.skipped(decision.name, unconvertible[decision.name]))
        else:
            layers.append(_refit(decision, sites[decision.name], where))
    listed = {d.name for d in plan.layers}  # convs no form can take, where the plan leaves them out
    layers += [LayerDecision.skipped(n, why) for n, why in unconvertible.items() if n not in listed]
    return replace(plan, layers=layers)


def _check_same_layers(plan: Plan, convs: list[str], unconvertible: list[str], source: str) -> None:
    """Every conv of the model in the plan (those no form can take may be left out) and nothing else."""
    names = [d.name for d in plan.layers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PlanError(f"{source} lists {_names(twice)} more than once; make the plan with `convslim plan`")
    missing = [n for n in convs if n not in set(names)]
    extra = [n for n in names if n not in set(convs + unconvertible)]
    if not (missing or extra):
        return
    parts = []
    if missing:
        parts.append(f"this model's convs {_names(missing)} are not in the plan")
    if extra:
        parts.append(f"the plan's layers {_names(extra)} are not convs of this model")
    raise PlanError(
        f"{source} was made for another model: {'; '.join(parts)}; make the plan on this model (`convslim plan`)"
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(map(repr, names[:SHOWN]))
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "") + f" ({len(names)})"


def _refit(decision: LayerDecision, site: ConvSite, where: str) -> LayerDecision:
    """The decision recomputed from ``site``: the same form and (checked) setting, costs from the model."""
    weight_shape = list(site.conv.weight.shape)
    if decision.weight_shape != weight_shape:
        raise PlanError(
            f"{where}: planned for weight shape {decision.weight_shape}, the model has {weight_shape}; the plan was "
            "made for another model: make the plan on this model"
        )
    if decision.form is None:
        kept = decide(site, None, {}, reason=decision.skipped_reason or "kept by the plan")
        return replace(kept, measured=decision.measured)
    if decision.form not in FORMS:
        raise PlanError(f"{where}: unknown form {decision.form!r}; choose one of {', '.join(sorted(FORMS))}")
    form = FORMS[decision.form]
    setting = form.as_built(site, form.checked_setting(site, decision.setting, where))
    reason = form.supports(site, setting)
    if reason is not None and not reason.startswith(NO_SAVING):
        raise PlanError(f"{where}: {form.name} cannot take this conv at {setting}: {reason}; fix the setting")
    # a plan is data: it may force a rewrite that saves nothing (the costs then say so)
    return replace(decide(site, form.name, setting, forced=True), measured=decision.measured)


__all__ = ["fit_plan"]
