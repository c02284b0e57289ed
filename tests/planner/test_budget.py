"""Selection on synthetic cost tables: budgets met, least damage, never a slower candidate."""

from __future__ import annotations

import itertools

import pytest

from convslim.planner.budget import Choice, Selection, blend, select


def _table():
    # three layers, each with a cheap/lossy and a mild option; times in arbitrary units
    return {
        "a": [Choice("a", "a1", 5.0, 0.30, 0.3), Choice("a", "a2", 2.0, 0.05, 0.7)],
        "b": [Choice("b", "b1", 4.0, 0.10, 0.4), Choice("b", "b2", 1.0, 0.01, 0.9)],
        "c": [Choice("c", "c1", 3.0, 0.50, 0.5)],
    }


def _brute_force(table, need):
    best = None
    layers = list(table)
    for combo in itertools.product(*[[None, *table[k]] for k in layers]):
        saving = sum(o.saving for o in combo if o)
        energy = sum(o.energy for o in combo if o)
        if saving >= need and (best is None or energy < best):
            best = energy
    return best


@pytest.mark.parametrize("need", [1.0, 3.0, 5.0, 7.0, 9.0])
def test_meets_need_with_near_least_damage(need):
    table = _table()
    chosen = select(table, need=need)
    by_key = {o.key: o for opts in table.values() for o in opts}
    assert chosen.reached
    assert sum(by_key[k].saving for k in chosen.choice.values()) >= need
    assert chosen.saving >= need
    # greedy is not exact, but on this table it must stay within 2x the optimum energy
    assert chosen.energy <= 2 * _brute_force(table, need) + 1e-12


def test_small_need_uses_the_gentle_option():
    chosen = select(_table(), need=1.0)
    assert chosen.choice == {"b": "b2"}


def test_unreachable_budget_is_reported():
    chosen = select(_table(), need=100.0)
    assert not chosen.reached
    assert chosen.saving == pytest.approx(12.0)  # the most the table can save: a1 + b1 + c1


def test_never_selects_a_slower_candidate():
    table = {
        "a": [Choice("a", "fast", 1.0, 0.5, 0.8), Choice("a", "slow", 3.0, 0.0, 1.2)],
        "b": [Choice("b", "equal", 2.0, 0.0, 1.0)],
    }
    chosen = select(table, need=100.0)
    assert chosen.choice == {"a": "fast"}


def test_error_budget_caps_damage_and_maximises_saving():
    table = _table()
    chosen = select(table, max_energy=0.11**2)
    assert chosen.predicted_error <= 0.11
    assert chosen.saving >= 3.0  # a2 + b2; greedy is not exact (b1 alone saves 4.0), but nothing else fits
    loose = select(table, max_energy=1.0)
    assert loose.choice == {"a": "a1", "b": "b1", "c": "c1"}


def test_speedup_budget_arithmetic_through_plan_numbers():
    # a model of 10 time units; speedup 2 needs 5 units saved
    table = {"x": [Choice("x", "x1", 6.0, 0.2, 0.4)], "y": [Choice("y", "y1", 4.0, 0.01, 0.6)]}
    need = 10.0 * (1 - 1 / 2.0)
    chosen = select(table, need=need)
    assert 10.0 / (10.0 - chosen.saving) >= 2.0
    assert chosen.choice == {"x": "x1"}


def test_blend_switches_half_the_differing_layers_most_efficient_first():
    table = _table()
    slow, fast = Selection({"a": "a2", "b": "b2"}), Selection({"a": "a1", "b": "b1", "c": "c1"})
    mid = blend(table, slow, fast)
    # per unit of added energy: b2→b1 gains 3/0.0099, a2→a1 3/0.0875, c 3/0.25; half of 3 layers is 1: b
    assert mid.choice == {"a": "a2", "b": "b1"}
    assert mid.saving == pytest.approx(2.0 + 4.0) and mid.energy == pytest.approx(0.05**2 + 0.10**2)
    assert blend(table, slow, Selection({"a": "a1", "b": "b2"})) is None  # one layer apart: nothing between
