"""Per-layer timings that overstate the whole model (issue 15): on a synthetic cost table the scaled savings
never exceed the model's time, the predicted time stays positive, the multiplier stays under its cap, and the
closed loop still lands in the target window when a selection there exists."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from convslim.planner.budget import Choice, select
from convslim.planner.closed_loop import OVERSHOOT, SearchOptions, search
from convslim.planner.compose import layer_scale, max_multiplier, predicted_time

BASE_S = 0.02


def _table(alone: list[float], saved_share: float, overstate: float):
    """Layers whose isolated times sum to ``overstate`` × the model's time; each candidate saves ``saved_share``
    of its layer alone. Returns the options (scaled like the planner) and the unscaled savings."""
    layer_total = sum(alone)
    times = [t * overstate * BASE_S / layer_total for t in alone]
    scale = layer_scale(BASE_S, sum(times))
    raw = {f"l{i}": t * saved_share for i, t in enumerate(times)}
    table = {
        name: [Choice(name, "cand", saving=s * scale, damage=0.01 * (i + 1), ratio=1 - saved_share)]
        for i, (name, s) in enumerate(raw.items())
    }
    return table, raw


@settings(max_examples=60, deadline=None)
@given(
    alone=st.lists(st.floats(0.5, 2.0), min_size=8, max_size=30),
    saved_share=st.floats(0.3, 0.95),
    overstate=st.floats(0.6, 2.5),
    target=st.floats(1.2, 4.0),
)
def test_scaled_savings_never_exceed_the_model(alone, saved_share, overstate, target):
    table, _ = _table(alone, saved_share, overstate)
    need = BASE_S * (1 - 1 / target)
    cap = max_multiplier(table, need)
    everything = select(table, need=need * cap * 10)
    assert everything.saving < BASE_S  # even every layer's largest saving leaves the model some time
    assert predicted_time(BASE_S, everything.saving) > 0
    assert BASE_S / predicted_time(BASE_S, everything.saving) < 1 / (1 - saved_share) + 1e-9
    assert select(table, need=need * cap).choice == everything.choice  # above the cap nothing changes


@settings(max_examples=40, deadline=None)
@given(
    alone=st.lists(st.floats(0.5, 2.0), min_size=20, max_size=40),
    overstate=st.floats(1.0, 2.5),
    realised=st.floats(0.5, 1.0),
    target=st.floats(1.3, 2.5),
)
def test_search_stays_bounded_and_lands_in_the_window(alone, overstate, realised, target):
    """The whole model realises ``realised`` of the savings its layers showed alone (after scaling)."""
    table, raw = _table(alone, 0.8, overstate)
    scale = layer_scale(BASE_S, sum(raw.values()) / 0.8)
    need = BASE_S * (1 - 1 / target)
    cap = max_multiplier(table, need)

    def measure(layers):
        true_saved = realised * scale * sum(raw[name] for name in layers)
        return BASE_S / (BASE_S - true_saved)

    def select_at(multiplier):
        chosen = select(table, need=need * multiplier)
        return chosen, list(chosen.choice), chosen.saving

    reachable = sorted(measure([f"l{i}" for i in range(n)]) for n in range(len(raw) + 1))
    (_, layers, saved), rounds = search(select_at, measure, target, BASE_S, SearchOptions(cap=cap))
    assert all(r["multiplier"] <= cap * 1.0001 for r in rounds), (cap, rounds)
    assert all(0 <= r["saved_fraction"] < 1 for r in rounds)
    assert predicted_time(BASE_S, saved) > 0
    got = measure(layers)
    if reachable[-1] < target:
        assert got == max(r["measured_speedup"] for r in rounds)  # out of reach: the fastest measured
    elif any(target * 1.02 <= s <= target * OVERSHOOT * 0.98 for s in reachable):
        assert got >= target * 0.97, rounds
