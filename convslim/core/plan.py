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
from pathlib import Path
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
        """The plan in ``text``, its structure checked (every field of the type it must have): a plan file is
        untrusted input. Whether it fits a model, and its settings, are checked where it is applied
        (``convslim.planner.fit``)."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(
                f"{source} is not a convslim plan ({exc}); make one with `convslim plan`"
            ) from None
        _check_fields(raw, PLAN_FIELDS, source)
        if raw.get("version") != PLAN_VERSION:
            raise PlanError(f"{source}: plan version {raw.get('version')} is not {PLAN_VERSION}")
        if not isinstance(raw["layers"], list):
            raise PlanError(f"{source}: layers must be a list, got {type(raw['layers']).__name__}")
        for i, layer in enumerate(raw["layers"]):
            _check_fields(layer, LAYER_FIELDS, f"{source} layers[{i}]")
        layers = [LayerDecision(**d) for d in raw.pop("layers")]
        return cls(layers=layers, **raw)

    @classmethod
    def read(cls, path: str | Path, source: str | None = None) -> Plan:
        """``from_json`` of a file, named ``source`` in messages (default: its path); a file that is not UTF-8
        text is a ``PlanError`` too."""
        source = source or str(path)
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(
                f"{source} is not a convslim plan (not UTF-8 text: byte {exc.start}); make one with `convslim plan`"
            ) from None
        return cls.from_json(text, source)


_INT, _TEXT, _LIST, _DICT = (int,), (str,), (list,), (dict,)
PLAN_FIELDS = {
    "form": _TEXT,
    "options": _DICT,
    "layers": _LIST,
    "version": _INT,
    "planning": (dict, type(None)),
}
LAYER_FIELDS = {
    "name": _TEXT,
    "form": (str, type(None)),
    "setting": _DICT,
    "skipped_reason": (str, type(None)),
    "weight_shape": _LIST,
    "in_shape": _LIST,
    "out_shape": _LIST,
    "params_before": _INT,
    "params_after": _INT,
    "macs_before": _INT,
    "macs_after": _INT,
    "measured": (dict, type(None)),
}
OPTIONAL_FIELDS = {"planning", "measured", "version"}
SHAPE_FIELDS = {"weight_shape", "in_shape", "out_shape"}


def _check_fields(raw: Any, fields: dict[str, tuple], where: str) -> None:
    """``raw`` is a JSON object with exactly ``fields`` (the optional ones may be missing), each of its type."""
    if not isinstance(raw, dict):
        raise PlanError(f"{where} is not a convslim plan: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(fields))
    missing = sorted(set(fields) - set(raw) - OPTIONAL_FIELDS)
    if unknown or missing:
        said = "; ".join(
            part
            for part in (
                f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                f"missing {', '.join(missing)}" if missing else "",
            )
            if part
        )
        raise PlanError(f"{where} is not a convslim plan ({said}); make one with `convslim plan`")
    for key, value in raw.items():
        kinds = fields[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise PlanError(f"{where}: {key} must be {names}, got {json.dumps(value)[:60]}")
        if key in SHAPE_FIELDS and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise PlanError(f"{where}: {key} must be a list of whole numbers, got {json.dumps(value)[:60]}")


def cache_summary(planning: dict) -> str:
    """How a plan's layer timings were found, for the terminal and the report: cache hits and misses, and
    whether the spot check found the cached timings stale (``planner.latency.spot_check``).

    Example:
        >>> cache_summary({"cache_hits": 3, "cache_misses": 0})
        'latency cache 3 hits / 0 misses'
    """
    line = f"latency cache {planning['cache_hits']} hits / {planning['cache_misses']} misses"
    check = planning.get("cache_check")
    if check and check["stale"]:
        line += f"; cached timings were {check['factor']:.2f}x off today's, so every layer was re-timed"
    return line
