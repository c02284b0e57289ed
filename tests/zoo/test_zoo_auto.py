"""``--to auto`` on the zoo's hard cases (an efficient net, grouped convs, the trace fallback, two outputs), with
tiny timing settings on the fake timer (tests/fake_timer.py): the plan is made, reaches its budget, is applied,
exported and passes parity; every layer is timed or has a reason, and when nothing measures faster the plan says
so and keeps the model."""

from __future__ import annotations

import pytest
import torch

import convslim
from convslim.api import prepare
from convslim.errors import UsageError
from convslim.models.zoo import build
from convslim.planner import LatencyCache, plan_to_budget
from convslim.planner.verdict import NOTHING_FASTER

GRID = {
    "dwsep": [{"rank": 1}],
    "spatial": [{"rank": 0.5}],
    "grouped": [{"groups": 2}],
    "octave": [{"alpha": 0.5}],
}
TINY = {"batch": 2, "seconds": 0.005, "grid": GRID}


@pytest.mark.parametrize(
    ("name", "budget"),
    [
        ("mobilenet_v2", {"target_speedup": 1.3}),
        ("resnext", {"target_macs": 0.8}),
        ("enet", {"target_macs": 0.9}),
    ],
)
def test_auto_plan_exports_with_parity(name, budget, tmp_path):
    model, shape = build(name)
    x = torch.randn(shape)
    plan = plan_to_budget(prepare(model, x), "auto", cache=LatencyCache(tmp_path), **budget, **TINY)
    assert all(d.form or d.skipped_reason for d in plan.layers)
    timed = {row["layer"] for row in plan.planning["layer_timings"]}
    assert timed and all(row["original_ms"] > 0 for row in plan.planning["layer_timings"])
    assert {d.name for d in plan.rewritten} <= timed
    assert plan.rewritten and plan.planning["verdict"] is None and plan.planning["reached"]  # fake timer
    result = convslim.compress(model, x, plan=plan, measure_speed=False)
    assert result.report.passed, result.report.parity


def test_nothing_faster_is_said_plainly_and_the_model_kept(monkeypatch, tmp_path):
    """Every candidate measuring slower (as on an efficient net) → no rewrite, the verdict, per-layer timings."""

    def all_slower(module, sites, candidates, *args, **kwargs):
        for cand in candidates:
            cand.measured = {"orig_s": 1e-3, "cand_s": 1.5e-3, "ratio": 1.5, "saved_s": -5e-4, "spread": 0.0}

    monkeypatch.setattr("convslim.planner.budgeted.measure_candidates", all_slower)
    model, shape = build("mobilenet_v2")
    x = torch.randn(shape)
    plan = plan_to_budget(prepare(model, x), "auto", target_speedup=1.3, **TINY)
    assert not plan.rewritten
    with pytest.raises(UsageError, match="nothing was rewritten: no layer of this model gets faster"):
        convslim.compress(model, x, plan=plan, measure_speed=False)
    assert plan.planning["verdict"] == NOTHING_FASTER and plan.planning["reached"] is False
    rows = plan.planning["layer_timings"]
    assert rows and all(
        r["fastest_ratio"] == 1.5 and r["original_ms"] == 1.0 and not r["chosen"] for r in rows
    )
    assert all("slower" in d.skipped_reason or "no form" in d.skipped_reason for d in plan.layers)
