"""Plans: which conv gets which form at which setting, and why the others are skipped.

A plan is data (inspect it, save it as JSON, edit it, apply it later). ``make_plan`` is the default policy:
one form, settings from the user's options, every conv the form supports. Other policies (a budgeted
planner) produce the same ``Plan``.

Example:
    >>> plan = make_plan(traced, sites, "dwsep", {"rank": 2})
    >>> [d.name for d in plan.layers if d.form is None]
    ['conv1']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from convslim.convert import get_form
from convslim.convert.base import ConvSite, dense_cost
from convslim.errors import PlanError

PLAN_VERSION = 1


@dataclass
class LayerDecision:
    """What happens to one conv. ``form`` is None when it is kept, and then ``skipped_reason`` says why."""

    name: str
    form: str | None
    setting: dict[str, Any]
    skipped_reason: str | None
    weight_shape: list[int]
    in_shape: list[int]
    out_shape: list[int]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    measured: dict[str, Any] | None = None  # budgeted planner: latency ratio, damage, candidates


@dataclass
class Plan:
    form: str
    options: dict[str, Any]
    layers: list[LayerDecision] = field(default_factory=list)
    version: int = PLAN_VERSION
    planning: dict[str, Any] | None = None  # budgeted planner: budget, predicted speedup/error, planning time

    @property
    def rewritten(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.form is not None]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            raw = json.loads(text)
            layers = [LayerDecision(**d) for d in raw.pop("layers")]
            if raw.get("version") != PLAN_VERSION:
                raise PlanError(f"{source}: plan version {raw.get('version')} is not {PLAN_VERSION}")
            return cls(layers=layers, **raw)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise PlanError(
                f"{source} is not a convslim plan ({exc}); make one with `convslim plan`"
            ) from None


def decide(
    site: ConvSite, form_name: str | None, setting: dict[str, Any], reason: str | None = None
) -> LayerDecision:
    """Build the decision for one site: ask the form whether it supports the conv, and cost both sides."""
    before = dense_cost(site)
    after = before
    if form_name is not None and reason is None:
        form = get_form(form_name)
        reason = form.supports(site, setting)
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


def make_plan(
    sites: list[ConvSite],
    form_name: str,
    options: dict[str, Any],
    unconvertible: dict[str, str] | None = None,
    exclude: tuple[str, ...] = (),
) -> Plan:
    """Uniform policy: every conv the form supports, at the setting the options give."""
    form = get_form(form_name)
    layers = []
    for site in sites:
        if any(site.name == e or site.name.startswith(e + ".") for e in exclude):
            layers.append(decide(site, form_name, {}, reason="excluded by --exclude"))
            continue
        if not site.calls:
            layers.append(decide(site, form_name, {}, reason="never called on the example inputs"))
            continue
        layers.append(decide(site, form_name, form.settings_from_options(site, options)))
    plan = Plan(form=form_name, options=dict(options), layers=layers)
    for node_name, reason in (unconvertible or {}).items():
        plan.layers.append(LayerDecision(node_name, None, {}, reason, [], [], [], 0, 0, 0, 0))
    return plan
