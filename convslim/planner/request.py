"""What the budgeted planner was asked: one budget, the forms allowed, and how to measure (batch, runtime target,
calibration images, layers excluded, latency cache, seconds per candidate, the grid, progress bars, opset).
Everything is checked here, before any measurement.

Example:
    >>> request = PlanRequest.of(prepared, "auto", {"target_speedup": 2.0, "batch": 32})
    >>> request.budget, request.value
    ('target_speedup', 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from convslim.core import Prepared
from convslim.errors import UsageError
from convslim.planner.candidates import parse_forms
from convslim.planner.latency import LatencyCache, LayerTiming
from convslim.planner.uniform import check_exclude
from convslim.runtime.targets import available_target
from convslim.runtime.targets.base import Target

BUDGETS = ("target_speedup", "target_macs", "max_error")


def check_budget(target_speedup=None, target_macs=None, max_error=None) -> str:
    """Which budget was given (exactly one), after checking its value; the message says what to pass."""
    given = {
        k: v
        for k, v in (
            ("target_speedup", target_speedup),
            ("target_macs", target_macs),
            ("max_error", max_error),
        )
        if v is not None
    }
    if len(given) != 1:
        raise UsageError("give exactly one budget: --target-speedup X, --target-macs F or --max-error E")
    ((name, value),) = given.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"--{name.replace('_', '-')} {value}: must be a finite number")
    if name == "target_speedup" and not value > 1:
        raise UsageError(f"--target-speedup {value}: must be above 1 (e.g. 2.0)")
    if name == "target_macs" and not 0 < value < 1:
        raise UsageError(f"--target-macs {value}: must be a fraction of the original MACs in (0, 1)")
    if name == "max_error" and not value > 0:
        raise UsageError(f"--max-error {value}: must be a positive relative output error (e.g. 0.1)")
    return name


def check_plan_threads(threads) -> None:
    """``threads`` is None (ORT's default) or a positive thread count; else a ``UsageError`` that says so."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--plan-threads {threads}: must be a positive thread count or 'default'")


@dataclass(frozen=True)
class PlanRequest:
    """One budget (``budget`` names it, ``value`` is its value), the forms allowed, and how to measure: at
    ``batch`` on ``target`` (``cpu-int8``: in int8), ``seconds`` per candidate, whole models exported at ``opset``
    as the pipeline ships them and timed with ``threads`` ORT intra-op threads per session (None: ORT's default,
    as the deployment runs them)."""

    forms: list[str]
    budget: str
    value: float
    batch: int = 32
    target: Target | str = "cpu"
    calibration: torch.Tensor | None = None
    exclude: Sequence[str] = ()
    cache: LatencyCache | None = None
    seconds: float = 0.3
    grid: dict | None = None
    progress: bool = False
    opset: int | None = None
    threads: int | None = None  # ORT intra-op threads of each whole-model round (None: ORT's default)
    original_onnx: bytes | None = None  # the original as the pipeline exported it (at ``opset``): not again

    @classmethod
    def of(cls, prepared: Prepared, to: str | Sequence[str], options: dict[str, Any]) -> PlanRequest:
        """From ``plan_to_budget``'s keywords: one of ``BUDGETS`` and any field of this class but the first
        three; an unknown keyword is a ``UsageError``."""
        options = dict(options)
        limits = {k: options.pop(k, None) for k in BUDGETS}
        unknown = sorted(set(options) - {f.name for f in fields(cls)[3:]})
        if unknown:
            raise UsageError(f"budgeted planning does not take {', '.join(unknown)}=")
        target = available_target(options.pop("target", "cpu"))
        budget = check_budget(**limits)
        check_exclude(options.get("exclude", ()), prepared)
        if len(prepared.example_inputs) != 1:
            raise UsageError(
                "budgeted planning takes single-input models; plan with --to FORM and its options"
            )
        if options.get("batch", 32) < 1:
            raise UsageError(f"--plan-batch {options['batch']}: must be a positive batch size")
        check_plan_threads(options.get("threads"))
        return cls(parse_forms(to), budget, limits[budget], target=target, **options)

    def layer_timing(self) -> LayerTiming:
        """How each candidate is timed (``planner.latency``)."""
        return LayerTiming(self.batch, self.target, self.seconds, self.progress)

    @property
    def limits(self) -> dict[str, float | None]:
        return {k: (self.value if k == self.budget else None) for k in BUDGETS}
