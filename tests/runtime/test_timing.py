"""The block timer on fake sessions with a virtual clock: ratios come out exact, blocks alternate, spread and
runs are reported. No real time is measured, so nothing here depends on how busy the machine is."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from convslim.runtime import timing
from convslim.runtime.timing import Timing, TimingSettings, compare, relative_iqr, time_sessions


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class FakeSession:
    """Each run advances the clock by the next cost in ``costs`` (cycled) and logs its name."""

    def __init__(self, name: str, costs: list[float], clock: Clock, log: list[str]):
        self.name, self.costs, self.clock, self.log, self.calls = name, costs, clock, log, 0

    def get_inputs(self):
        return [SimpleNamespace(name=f"{self.name}_input")]

    def run(self, outputs, feeds):
        assert list(feeds) == [f"{self.name}_input"]  # fed under its own input name
        self.clock.now += self.costs[self.calls % len(self.costs)]
        self.calls += 1
        self.log.append(self.name)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    # the real Clock class (the suite's fake timer aside), reading the virtual time below
    monkeypatch.setattr(timing, "CLOCK", timing.Clock())
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def _sessions(clock, costs: dict[str, list[float]]):
    log: list[str] = []
    return {n: FakeSession(n, c, clock, log) for n, c in costs.items()}, log


def test_ratio_exact_and_blocks_alternate(clock):
    sessions, log = _sessions(clock, {"slow": [0.004], "fast": [0.001]})
    settings = TimingSettings(seconds=1.0, block_seconds=0.1, warmup=2)
    timed = time_sessions(sessions, [np.zeros(1)], settings)
    result = compare(timed["slow"], timed["fast"])
    assert result["speedup"] == pytest.approx(4.0)
    assert result["speedup_iqr"] == pytest.approx([4.0, 4.0])
    assert result["rounds"] == len(timed["slow"].blocks) >= 4
    assert timed["slow"].spread == 0.0
    runs = log[4:]  # after warm-up, runs come in blocks of one session, slow first
    order = [n for i, n in enumerate(runs) if i == 0 or runs[i - 1] != n]
    assert order[:3] == ["slow", "fast", "slow"]


def test_block_order_abba(clock):
    """Round 0 runs A then B, round 1 B then A: the block sequence is A B B A A B ..."""
    sessions, log = _sessions(clock, {"a": [0.01], "b": [0.01]})
    settings = TimingSettings(seconds=0.6, block_seconds=0.05, warmup=0, min_runs=1)
    time_sessions(sessions, [np.zeros(1)], settings)
    blocks = []
    for name in log:
        if not blocks or blocks[-1][0] != name:
            blocks.append([name, 0])
        blocks[-1][1] += 1
    names = [b[0] for b in blocks]
    # A, then B B (B ends round 0 and starts round 1) merged, then A A merged: alternation every block pair
    assert names[:4] == ["a", "b", "a", "b"]
    assert blocks[1][1] > blocks[0][1]  # B's two consecutive blocks run back to back (ABBA)


def test_spread_and_runs_reported(clock):
    sessions, _ = _sessions(clock, {"ref": [0.010, 0.012, 0.008], "new": [0.005]})
    timed = time_sessions(sessions, [np.zeros(1)], TimingSettings(seconds=0.5, block_seconds=0.05))
    summary = timed["ref"].summary()
    assert summary["runs"] == timed["ref"].runs > 10 and summary["blocks"] >= 2
    assert summary["spread"] == pytest.approx(relative_iqr(timed["ref"].times)) and summary["spread"] > 0
    result = compare(timed["ref"], timed["new"])
    assert result["speedup"] == pytest.approx(2.0)
    assert result["runs"] == min(timed["ref"].runs, timed["new"].runs)


def test_min_rounds_and_max_runs(clock):
    sessions, _ = _sessions(clock, {"a": [0.001], "b": [0.001]})
    timed = time_sessions(sessions, [np.zeros(1)], TimingSettings(seconds=0.0, min_rounds=3, min_runs=1))
    assert len(timed["a"].blocks) >= 3
    sessions, _ = _sessions(clock, {"a": [0.001], "b": [0.001]})
    timed = time_sessions(sessions, [np.zeros(1)], TimingSettings(seconds=100.0, max_runs=50))
    assert min(t.runs for t in timed.values()) == 50


def test_compare_per_round_spread():
    ref = Timing([[0.010] * 5, [0.020] * 5, [0.010] * 5, [0.020] * 5])
    new = Timing([[0.005] * 5] * 4)
    result = compare(ref, new)
    assert result["speedup_iqr"][0] < result["speedup_iqr"][1]
    assert result["rounds"] == 4


def test_speedup_is_the_median_of_paired_rounds_not_of_pooled_runs():
    """The machine is twice as slow in rounds 2-3; the faster model, with more runs per block in the fast
    rounds, would pull its pooled median there. Every round says 2x, and so must the speedup."""
    ref = Timing([[0.010] * 10, [0.020] * 10, [0.020] * 10])
    new = Timing([[0.005] * 40, [0.010] * 10, [0.010] * 10])
    assert ref.median_s / new.median_s == pytest.approx(4.0)  # pooled: wrong
    result = compare(ref, new)
    assert result["speedup"] == pytest.approx(2.0)
    assert result["speedup_iqr"] == pytest.approx([2.0, 2.0])
