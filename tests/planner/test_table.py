"""The planner's per-layer table: choices from measured candidates, and why a layer stays dense."""

import math

from convslim.planner.budget import select
from convslim.planner.candidates import Candidate
from convslim.planner.table import choice_of, macs_table, why_kept


def _cand(rank, macs, ratio, damage=None):
    c = Candidate("a", "dwsep", {"rank": rank}, {"rank": rank}, macs=macs, params=0, dense_macs=900)
    c.measured.update(ratio=ratio, saved_s=1e-3 * (1 - ratio), orig_s=1e-3, cand_s=1e-3 * ratio)
    if ratio < 1:  # slower candidates are not worth a damage measurement
        c.measured["damage"] = 0.1 / (1 + rank) if damage is None else damage
    return c


def test_fewest_macs_table_saves_macs_among_options_measured_faster():
    # rank 2 measured (noisily) faster than rank 1; rank 0 stands for a cheaper option measured slower
    table = macs_table({"a": [_cand(1, 200, 0.52), _cand(2, 400, 0.50), _cand(0, 100, 1.1)]})
    assert select(table, need=float("inf")).choice == {"a": 'dwsep:{"rank": 1}'}


def test_choice_saves_measured_seconds_scaled_or_macs():
    c = _cand(1, 200, 0.6)
    assert math.isclose(choice_of(c, "target_speedup").saving, 4e-4)
    assert math.isclose(choice_of(c, "target_speedup", scale=0.5).saving, 2e-4)
    assert choice_of(c, "target_macs").saving == 700.0


def test_a_candidate_without_damage_saves_nothing():
    slower = choice_of(_cand(1, 200, 1.2), "target_speedup")
    assert slower.saving == 0.0 and math.isinf(slower.ratio)


def test_why_kept_names_the_reason():
    assert why_kept([], ["dwsep: grouped conv"]).startswith("no form applies: dwsep: grouped conv")
    assert "slower" in why_kept([_cand(1, 200, 1.2)], [])
    assert why_kept([_cand(1, 200, 0.6)], []) == "budget met without rewriting this layer"
