"""The speed budget's closed loop: correction of per-layer savings and the choice between rounds."""

from __future__ import annotations

import pytest
import torch

from convslim.api import prepare
from convslim.models import resnet20
from convslim.planner import plan_budgeted
from convslim.planner.closed_loop import correction, pick_round


def test_correction_is_the_share_of_saving_that_materialised():
    # predicted 2x (half the time saved), measured 1.33x (a quarter saved): half of the saving was real
    assert correction(2.0, 4 / 3) == pytest.approx(0.5)
    assert correction(2.0, 2.0) == pytest.approx(1.0)
    assert correction(2.0, 0.9) == 0.05  # slower than the original: clamped, never negative


def test_pick_round_prefers_the_least_speedup_that_reaches_the_target():
    rounds = [{"measured_speedup": s} for s in (1.7, 2.9, 2.6)]
    assert pick_round(rounds, 2.5)["measured_speedup"] == 2.6
    assert pick_round(rounds[:1], 2.5)["measured_speedup"] == 1.7  # none reaches: the fastest


def test_speed_budget_reports_whole_model_measurements(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path))
    prepared = prepare(resnet20().eval(), torch.randn(1, 3, 32, 32))
    plan = plan_budgeted(prepared, "dwsep", target_speedup=1.5, batch=4, seconds=0.02)
    rounds = plan.planning["rounds"]
    assert 1 <= len(rounds) <= 4 and sum(r.get("chosen", False) for r in rounds) == 1
    chosen = next(r for r in rounds if r.get("chosen"))
    assert plan.planning["predicted_speedup"] == chosen["measured_speedup"] > 0
