"""The zoo's shared pieces: a plan that gives every form a share of each model's convs."""

from __future__ import annotations

from convslim.convert import FORMS
from convslim.core import Plan
from convslim.planner.uniform import decide


def mixed_plan(sites) -> Plan:
    """Each conv gets the first form (rotating through the registry, default settings) that takes it, so one
    export covers every form a model can use; convs no form takes keep the reason of each form."""
    names = list(FORMS)
    layers = []
    for index, site in enumerate(sites):
        if not site.calls:
            layers.append(decide(site, None, {}, reason="never called on the example inputs"))
            continue
        reasons = []
        for name in names[index % len(names) :] + names[: index % len(names)]:
            setting = FORMS[name].settings_from_options(site, {})
            reason = FORMS[name].supports(site, setting)
            if reason is None:
                layers.append(decide(site, name, setting))
                break
            reasons.append(f"{name}: {reason}")
        else:
            layers.append(decide(site, None, {}, reason="; ".join(reasons)))
    return Plan(form="mixed", options={}, layers=layers)
