"""Measured planning on a tiny model: disk cache hits/misses, JSON round trip, bit-for-bit apply, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convslim.api import apply, prepare
from convslim.core import Plan, cache_summary
from convslim.errors import PlanError, UsageError
from convslim.planner import LatencyCache, latency, plan_to_budget
from convslim.planner.candidates import candidates_for, parse_forms

FAST = {"batch": 4, "seconds": 0.02}


class Tiny(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.c = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        x = torch.relu(self.c(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def prepared():
    return prepare(Tiny().eval(), torch.randn(1, 3, 12, 12))


@pytest.fixture(scope="module")
def shared_plan(prepared, tmp_path_factory):
    cache = LatencyCache(tmp_path_factory.mktemp("cache"))
    return plan_to_budget(prepared, "dwsep", target_macs=0.5, cache=cache, **FAST)


def test_cache_misses_then_hits(prepared, cache_dir, monkeypatch):
    monkeypatch.setattr(latency, "NOISY", float("inf"))  # tiny timings are noisy; a re-measure would miss
    first = LatencyCache()
    plan_to_budget(prepared, "dwsep", target_macs=0.5, cache=first, **FAST)
    assert first.misses > 0
    assert (cache_dir / latency.CACHE_FILE).is_file()
    # b and c share shape and config: the second one already hit within the first plan
    assert first.hits > 0
    second = LatencyCache()
    plan = plan_to_budget(prepared, "dwsep", target_macs=0.5, cache=second, **FAST)
    assert plan.planning["reached"] and plan.planning["predicted_macs_fraction"] <= 0.5
    assert second.misses == 0 and second.hits == first.hits + first.misses
    assert plan.planning["cache_misses"] == 0


def test_never_chooses_a_layer_measured_slower(prepared, cache_dir):
    from convslim.planner.candidates import GRID

    one_each = {form: options[:1] for form, options in GRID.items()}  # every form, one setting: keeps it fast
    plan = plan_to_budget(prepared, "auto", target_macs=0.3, grid=one_each, **FAST)
    for d in plan.rewritten:
        assert d.measured["ratio"] < 1.0, d.name
    for d in plan.layers:
        assert d.form is not None or d.skipped_reason


def test_plan_round_trips_and_applies_bit_for_bit(prepared, shared_plan):
    plan = shared_plan
    again = Plan.from_json(plan.to_json())
    assert again == plan
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(apply(prepared, plan)(x), apply(prepared, again)(x))


def test_wrong_layer_name_is_a_clear_plan_error(prepared, shared_plan):
    plan = shared_plan
    raw = json.loads(plan.to_json())
    raw["layers"][next(i for i, d in enumerate(raw["layers"]) if d["form"])]["name"] = "nope"
    with pytest.raises(PlanError, match="'nope'"):
        apply(prepared, Plan.from_json(json.dumps(raw)))


def test_plan_for_another_shape_is_a_clear_plan_error(shared_plan):
    plan = shared_plan
    other = prepare(Tiny().eval(), torch.randn(1, 3, 16, 16))
    with pytest.raises(PlanError, match="input-shape"):
        apply(other, plan)
    wider = prepare(Tiny(width=24).eval(), torch.randn(1, 3, 12, 12))
    with pytest.raises(PlanError, match=r"planned for input \[16, 12, 12\]"):
        apply(wider, plan)


def test_budget_and_form_errors(prepared, cache_dir):
    with pytest.raises(UsageError, match="exactly one budget"):
        plan_to_budget(prepared, "dwsep", **FAST)
    with pytest.raises(UsageError, match="above 1"):
        plan_to_budget(prepared, "dwsep", target_speedup=0.5, **FAST)
    with pytest.raises(UsageError, match="unknown form 'nosuch'"):
        parse_forms("dwsep,nosuch")


def test_a_form_that_raises_a_bug_stops_planning(prepared, monkeypatch):
    """A typed refusal only loses the candidate (tests/planner/test_candidates.py); a bug must surface."""
    from convslim.convert import FORMS

    class Broken:
        name = "broken"

        def settings_from_options(self, site, options):
            raise RuntimeError("unfinished")

    monkeypatch.setitem(FORMS, "broken", Broken())
    with pytest.raises(RuntimeError, match="unfinished"):
        candidates_for(prepared.sites[1], ["broken", "dwsep"], {"broken": [{}], "dwsep": [{"rank": 1}]})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_damage_after_refit_is_lower_for_heads_and_unchanged_otherwise(seed):
    from convslim.planner.damage import measure_damage, probe_inputs

    torch.manual_seed(seed)
    prepared = prepare(Tiny().eval(), torch.randn(1, 3, 12, 12))

    grid = {"dwsep": [{"rank": 1}], "spatial": [{"rank": 1}]}
    probe = probe_inputs(prepared.example_inputs, torch.randn(16, 3, 12, 12))
    damage = {}
    for refit in (False, True):
        cands = [
            c for site in prepared.sites[1:] for c in candidates_for(site, ["dwsep", "spatial"], grid)[0]
        ]
        measure_damage(prepared.traced.module, cands, probe, refit=refit)
        damage[refit] = {(c.layer, c.form): c.measured["damage"] for c in cands}
    for (layer, form), before in damage[False].items():
        after = damage[True][(layer, form)]
        if form == "dwsep":  # least squares on the layer's own inputs can only lower its output error
            assert after < before, (layer, before, after)
        else:  # no linear 1x1 heads to refit: measured as initialised
            assert after == pytest.approx(before)


def _scale_cached_ratios(cache_dir, factor: float) -> None:
    """Make every cached timing look ``factor`` times slower for the candidate, as a loaded machine might."""
    path = cache_dir / latency.CACHE_FILE
    entries = json.loads(path.read_text())
    for e in entries.values():
        e["cand_s"] *= factor
        e["ratio"] *= factor
    path.write_text(json.dumps(entries))


@pytest.mark.parametrize("factor", [1.2, 2.0, 0.5])
def test_stale_cached_timings_are_re_measured(prepared, cache_dir, factor):
    first = LatencyCache()
    reference = plan_to_budget(prepared, "dwsep", target_macs=0.5, cache=first, **FAST)
    assert reference.planning["cache_check"] is None  # nothing cached yet: nothing to check
    _scale_cached_ratios(cache_dir, factor)
    second = LatencyCache()
    plan = plan_to_budget(prepared, "dwsep", target_macs=0.5, cache=second, **FAST)
    check = plan.planning["cache_check"]
    assert check["checked"] >= 1 and check["factor"] == pytest.approx(max(factor, 1 / factor), rel=1e-6)
    stale = factor > latency.STALE or 1 / factor > latency.STALE
    assert check["stale"] == stale
    if stale:  # re-measured as the first run did (the fake timer is deterministic), and the file rewritten
        assert (second.hits, second.misses) == (first.hits, first.misses)
        assert plan.layers == reference.layers
        assert "re-timed" in cache_summary(plan.planning)
        third = LatencyCache()
        plan_to_budget(prepared, "dwsep", target_macs=0.5, cache=third, **FAST)
        assert third.misses == 0 and not third.check["stale"]
    else:
        assert second.misses == 0
        assert "re-timed" not in cache_summary(plan.planning)
