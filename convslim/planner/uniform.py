"""The uniform planning policy (``make_plan``) and the per-conv decision every policy builds (``decide``).

``Plan`` and ``LayerDecision`` are data in ``convslim.core``. ``make_plan`` is the default policy:
one form, settings from the user's options, every conv the form supports. Other policies (a budgeted
planner) produce the same ``Plan``.

Example:
    >>> plan = make_plan(traced, sites, "dwsep", {"rank": 2})
    >>> [d.name for d in plan.layers if d.form is None]
    ['conv1']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convslim.convert import get_form
from convslim.core import ConvSite, LayerDecision, Plan, Prepared, dense_cost
from convslim.errors import UsageError


def decide(
    site: ConvSite,
    form_name: str | None,
    setting: dict[str, Any],
    reason: str | None = None,
    *,
    forced: bool = False,
) -> LayerDecision:
    """Build the decision for one site: ask the form whether it supports the conv (not when ``forced``: a plan
    file may ask for a rewrite that saves nothing), and cost both sides."""
    before = dense_cost(site)
    after = before
    if form_name is not None and reason is None:
        form = get_form(form_name)
        reason = None if forced else form.supports(site, setting)
        if reason is None:
            after = form.cost(site, setting)
    chosen = form_name if reason is None else None
    return LayerDecision(
        name=site.name,
        form=chosen,
        setting=setting if chosen else {},
        skipped_reason=reason,
        weight_shape=list(site.conv.weight.shape),
        in_shape=list(site.in_shape),
        out_shape=list(site.out_shape),
        params_before=before.params,
        params_after=after.params,
        macs_before=before.macs,
        macs_after=after.macs,
    )


def excluded(name: str, exclude: Sequence[str]) -> bool:
    """``--exclude layer1`` keeps ``layer1`` and everything under it (``layer1.0.conv1``), not ``layer10``."""
    return any(name == e or name.startswith(e + ".") for e in exclude)


def check_exclude(exclude: Sequence[str], prepared: Prepared) -> None:
    """Every ``--exclude`` entry names a conv of the model or a module above one (checked before any work: a typo
    would otherwise rewrite the layer the user meant to keep)."""
    names = [s.name for s in prepared.sites] + list(prepared.traced.unconvertible)
    for entry in exclude or ():
        if not isinstance(entry, str) or not any(excluded(name, (entry,)) for name in names):
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise UsageError(
                f"--exclude {entry}: no conv of this model is {entry} or under it; its convs: {shown or 'none'}"
            )


def site_skip_reason(site: ConvSite, exclude: Sequence[str] = ()) -> str | None:
    """Why ``site`` is kept before any form is asked (excluded, or never called), else None."""
    if excluded(site.name, exclude):
        return "excluded by --exclude"
    if not site.calls:
        return "never called on the example inputs"
    return None


def make_plan(
    sites: list[ConvSite],
    form_name: str,
    options: dict[str, Any],
    unconvertible: dict[str, str] | None = None,
    exclude: tuple[str, ...] = (),
) -> Plan:
    """Uniform policy: every conv the form supports, at the setting the options give."""
    form = get_form(form_name)
    options = form.check_options(options)  # every option in force, defaults included; bad values refused here
    layers = []
    for site in sites:
        reason = site_skip_reason(site, exclude)
        if reason is not None:
            layers.append(decide(site, form_name, {}, reason=reason))
        else:
            layers.append(decide(site, form_name, form.settings_from_options(site, options)))
    plan = Plan(form=form_name, options=dict(options), layers=layers)
    for node_name, reason in (unconvertible or {}).items():
        plan.layers.append(LayerDecision.skipped(node_name, reason))
    return plan


__all__ = ["decide", "excluded", "make_plan", "site_skip_reason"]
