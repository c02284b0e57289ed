"""When fine-tuning stops: a step/time budget, and Ctrl-C / SIGTERM turned into a clean stop.

``interruptible()`` swaps in signal handlers that only set a flag; the training loops poll ``stop.requested``
between steps and return the best weights so far, so the caller still exports and writes the report (marked
interrupted). A second signal (Ctrl-C or SIGTERM) raises ``core.signals.Interrupted``, a ``KeyboardInterrupt``
(the way out of a stuck run). The old
handlers come back on exit. Off the main thread signals cannot be caught, so there it is a no-op.

Example:
    >>> with interruptible() as stop:
    ...     while not stop.requested and budget.left():
    ...         step()
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from convslim.core.signals import Interrupted


@dataclass
class StopFlag:
    requested: bool = False
    signal_name: str | None = None
    stage: str = "stage 1"  # where the fine-tune is now (the recipe moves it on)
    stopped_in: str | None = None  # the stage the first signal arrived in


@contextlib.contextmanager
def interruptible() -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:  # a second signal, either kind: abort, as Ctrl-C does outside fine-tuning
            raise Interrupted(signal.Signals(signum).name)
        flag.requested = True
        flag.signal_name = signal.Signals(signum).name
        flag.stopped_in = flag.stage
        print(
            f"\nconvslim: {flag.signal_name} received: stopping the fine-tune; the best weights so far are being "
            "exported and written (press Ctrl-C or send SIGTERM again to abort without writing)",
            file=sys.stderr,
            flush=True,
        )

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@dataclass
class TrainBudget:
    """``steps`` and/or ``seconds`` (None: unbounded); ``progress()`` is the larger used fraction, in [0, 1]."""

    steps: int | None
    seconds: float | None
    start: float = field(default_factory=time.perf_counter)
    done: int = 0
    shared_elapsed: float | None = None  # under torchrun: rank 0's clock (``parallel.agree``)

    def own_elapsed(self) -> float:
        return time.perf_counter() - self.start

    def elapsed(self) -> float:
        return self.own_elapsed() if self.shared_elapsed is None else self.shared_elapsed

    def progress(self) -> float:
        fractions = [0.0]
        if self.steps:
            fractions.append(self.done / self.steps)
        if self.seconds is not None:  # 0 s is a budget already spent, not an unbounded one
            fractions.append(self.elapsed() / self.seconds if self.seconds > 0 else 1.0)
        return min(1.0, max(fractions))

    def left(self) -> bool:
        return self.progress() < 1.0 and (self.steps is None or self.done < self.steps)
