"""The one timer: ORT sessions in alternating blocks, medians, a spread for every number and the run count.

Method. Every session gets the same inputs (under its own input names), warms up, then runs in blocks of
``block_seconds``: A B, B A, A B, ... so drift hits all alike. Why blocks and not run-by-run alternation: after a
run, ORT's worker threads spin-wait for more work, so on few cores the next session's run competes with them.
Measured on this project's 2-core machine, ResNet-20 at batch 32 took 17.5 ms alone but 33 ms when two
sessions alternated run by run, and the speedup read 2.9-3.2x instead of 2.7x. A block's first run is not timed
when runs are shorter than a block (it pays for the other model's cache traffic).

Numbers. A latency is the median over all timed runs, with its relative interquartile range
``(q75 − q25) / median``. A speedup ``t_ref / t_new`` is the median of the per-round ratios (round i: the median
of A's block i over the median of B's block i), with their interquartile range as its spread, so a speedup that
swings between blocks shows it. Why not the ratio of the overall medians: each model's overall median weighs a
block by its run count, and when the machine's speed shifts between blocks the two medians can come from
different blocks. Measured on ResNet-20 (issue 15 benchmark) that ratio fell outside its own per-round IQR
(2.28x against per-round 2.55-2.68x). Runs and rounds are reported with every number.

Example:
    >>> timings = time_sessions({"a": session_a, "b": session_b}, [x], TimingSettings(seconds=3))
    >>> compare(timings["a"], timings["b"])["speedup"]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from convslim.core.seeded import inputs_like
from convslim.runtime.sessions import feeds


@dataclass(frozen=True)
class TimingSettings:
    """``seconds``: least total time; ``block_seconds``: one block (default ``seconds``/4 within 0.05-1 s);
    ``min_rounds``: least alternation rounds; ``min_runs``/``max_runs``: per session; ``warmup``: untimed runs;
    ``threads``: ORT intra-op threads per session (None: ORT's default, one per core; ``STEADY_THREADS``: see
    there). Sessions made by the caller keep their own."""

    seconds: float = 3.0
    block_seconds: float | None = None
    min_rounds: int = 3
    min_runs: int = 10
    max_runs: int = 100_000
    warmup: int = 3
    threads: int | None = None

    @property
    def block(self) -> float:
        if self.block_seconds is not None:
            return self.block_seconds
        return min(1.0, max(0.05, self.seconds / 4))


DEFAULT_TIMING = TimingSettings()

# One intra-op thread per session: the thread count whose ratios stay steady on a shared machine. On a 2-core VM
# the second core is now and then taken for tens of seconds, and a multi-threaded run of a graph of many small
# ops (a planned model) then waits at every op's barrier while the original's few large ops barely notice: over
# 3 minutes of interleaved 0.1 s blocks (ResNet-20, an x3 plan, batch 32; benchmarks/bench_thread_modes.py) the
# default threads' ratio read 2.19-3.06x in ~9 s windows, the one-thread ratio 2.68-3.15x with 20 of 21 windows
# at 3.01-3.15x (x2 plan: 1.60-2.03x against 1.93-2.11x). Undisturbed, the default's ratio sits 1-5 % below the
# one-thread one.
STEADY_THREADS = 1


@dataclass
class Timing:
    """Seconds per run of one session, grouped by block (one block per round)."""

    blocks: list[list[float]] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [t for block in self.blocks for t in block]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        return relative_iqr(self.times)

    @property
    def runs(self) -> int:
        return len(self.times)

    def summary(self) -> dict:
        return {
            "ms": self.median_s * 1e3,
            "spread": self.spread,
            "runs": self.runs,
            "blocks": len(self.blocks),
        }


def relative_iqr(values: list[float]) -> float:
    """(q75 − q25) / median; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    q = np.percentile(values, [25, 50, 75])
    return float((q[2] - q[0]) / q[1]) if q[1] > 0 else 0.0


def compare(reference: Timing, candidate: Timing) -> dict:
    """Speedup of ``candidate`` over ``reference``: the median of the per-round ratios, with their interquartile
    range (the ratio of overall medians when no round paired the two)."""
    per_round = [
        statistics.median(a) / statistics.median(b)
        for a, b in zip(reference.blocks, candidate.blocks, strict=False)
        if a and b
    ]
    low, high = np.percentile(per_round, [25, 75]) if per_round else (float("nan"),) * 2
    paired = statistics.median(per_round) if per_round else reference.median_s / candidate.median_s
    return {
        "speedup": paired,
        "speedup_iqr": [float(low), float(high)],
        "rounds": len(per_round),
        "runs": min(reference.runs, candidate.runs),
    }


class Clock:
    """What ``time_sessions`` reads the time from and runs a session with: the real ones. ``CLOCK`` is the one in
    use; tests of code that plans on timings put a fake in its place (``tests/conftest.py``'s ``fake_timer``: a
    model's run "takes" a time computed from its graph), so their outcome does not depend on the machine's load."""

    def now(self) -> float:
        return time.perf_counter()

    def run(self, session, fed: dict) -> None:
        session.run(None, fed)


CLOCK = Clock()


def time_sessions(
    sessions: dict, inputs: list, settings: TimingSettings = DEFAULT_TIMING
) -> dict[str, Timing]:
    """Time every session in alternating blocks (see the module docstring); returns one Timing per name."""
    clock = CLOCK
    names = list(sessions)
    fed = {n: feeds(sessions[n], inputs) for n in names}
    for name in names:  # warm-up: first runs pay for allocation and kernel selection
        for _ in range(settings.warmup):
            clock.run(sessions[name], fed[name])
    timings = {name: Timing() for name in names}
    last = dict.fromkeys(names, 0.0)
    start = clock.now()
    rounds = 0
    while _more(timings, rounds, clock.now() - start, settings):
        for name in names if rounds % 2 == 0 else names[::-1]:
            last[name] = _block(clock, (sessions[name], fed[name]), timings[name], last[name], settings)
        rounds += 1
    return timings


def _more(timings: dict[str, Timing], rounds: int, elapsed: float, settings: TimingSettings) -> bool:
    fewest = min(t.runs for t in timings.values())
    if fewest >= settings.max_runs:
        return False
    return fewest < settings.min_runs or rounds < settings.min_rounds or elapsed < settings.seconds


def _block(clock: Clock, fed_session: tuple, timing: Timing, last: float, settings: TimingSettings) -> float:
    """One block of runs of one session (``fed_session``: the session and its feeds); returns the last run's
    time."""
    session, fed = fed_session
    if last < settings.block:
        clock.run(session, fed)
    block: list[float] = []
    block_start = clock.now()
    while True:
        t0 = clock.now()
        clock.run(session, fed)
        last = clock.now() - t0
        block.append(last)
        if clock.now() - block_start >= settings.block or timing.runs + len(block) >= settings.max_runs:
            break
    timing.blocks.append(block)
    return last


def random_inputs(example_inputs: tuple, batch: int) -> list[np.ndarray]:
    """Seeded normal inputs shaped like ``example_inputs`` with the batch dimension set to ``batch``."""
    return [t.numpy() for t in inputs_like(example_inputs, batch, dtype=torch.float32)]
