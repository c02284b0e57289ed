"""SIGTERM treated as Ctrl-C: the same clean-up (temporary folders removed, staged outputs dropped), the same words,
exit code 128 + the signal's number.

Python turns SIGINT into ``KeyboardInterrupt``, so every ``finally`` and ``with`` block unwinds; SIGTERM's default
ends the process on the spot, leaving ``convslim-*`` folders in ``$TMPDIR``. ``terminate_as_interrupt()`` makes
SIGTERM raise ``Interrupted("SIGTERM")``, a ``KeyboardInterrupt``, so code written for Ctrl-C handles both.
Fine-tuning installs its own handlers meanwhile (``finetune.stopping``): the first signal stops training, a
second of either kind raises ``Interrupted``.

Example:
    >>> with terminate_as_interrupt():
    ...     run()                      # SIGTERM here unwinds like Ctrl-C
    >>> exit_code(Interrupted("SIGTERM"))
    143
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal; ``signal_name`` says which (``SIGINT`` for Ctrl-C, ``SIGTERM``)."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name(exc: BaseException) -> str:
    """The signal behind a ``KeyboardInterrupt`` (a plain one is Ctrl-C)."""
    return getattr(exc, "signal_name", "SIGINT")


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + signal.Signals[signal_name(exc)].value


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``Interrupted("SIGTERM")``; the old handler comes back on exit. Off the main
    thread signals cannot be caught, so there it is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while inside (delivered on exit): for the few renames that put an output in
    place, which must happen all or not at all. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
