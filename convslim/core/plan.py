"""Plans as data: which conv gets which form at which setting, and why the others are skipped.

A plan can be inspected, saved as JSON, edited and applied later. Policies that produce plans (the uniform
``convslim.planner.uniform.make_plan``, the budgeted ``convslim.planner``) live above this layer.

Example:
    >>> plan = Plan(form="dwsep", options={"rank": 1}, layers=[LayerDecision.skipped("conv2d_1", "computed weight")])
    >>> Plan.from_json(plan.to_json()) == plan
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

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

    @classmethod
    def skipped(cls, name: str, reason: str) -> LayerDecision:
        """A conv kept as it is that has no module to cost (e.g. a functional conv with a computed weight)."""
        return cls(name, None, {}, reason, [], [], [], 0, 0, 0, 0)


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
