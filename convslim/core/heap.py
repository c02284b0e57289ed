"""Keeping freed memory in the process while training on CPU: glibc malloc's thresholds, raised for a scope.

Why. glibc's malloc hands a freed block back to the kernel when it was mmapped (blocks over
``M_MMAP_THRESHOLD``) or when the free space at the heap's top exceeds ``M_TRIM_THRESHOLD``; the next step's
tensor of the same size then faults in fresh, zeroed pages. A rewritten student's training step allocates
dozens of 0.1-8 MB activations and gradients (two small convs per rank of each dwsep layer): on ResNet-20's ×2
plan (batch 128, a fresh process, glibc's defaults) it took 3,500-10,700 minor page faults per step, the
original model's own step 0-2,700; with the thresholds raised, 0-220 (``benchmarks/bench_heap.py``). Stage 2
then ran 0.92-0.99× plain training's images per second instead of 0.76-0.77× (``bench_finetune.py --profile``,
README). The fix CPU-training guides give is another allocator (jemalloc, tcmalloc) preloaded; this one needs
nothing installed.

What. ``retained_heap()`` sets, for its scope,

    M_MMAP_THRESHOLD = 32 MiB   (the most glibc takes on 64-bit; larger blocks are mmapped as before)
    M_TRIM_THRESHOLD = 1 GiB    (free space kept at the heap's top before it is given back)
    M_TOP_PAD        = 64 MiB   (extra asked of the kernel per heap growth)

and on exit sets glibc's documented starting values again (128 KiB each; its dynamic mmap threshold stays off,
as after any ``mallopt``) and trims the heap (``malloc_trim``), so the memory goes back to the system when the
fine-tune ends. It leaves malloc alone off glibc (macOS, musl), when the environment already tunes it
(``GLIBC_TUNABLES`` with ``glibc.malloc.*``, or ``MALLOC_*_`` variables: the user's choice wins), and inside an
outer ``retained_heap``; it yields one line saying what it did, for the report.

Example:
    >>> with retained_heap() as heap:
    ...     train()
    >>> heap
    'retained (glibc malloc: mmap threshold 32 MiB, trim threshold 1 GiB, top pad 64 MiB)'
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>
RETAINED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
GLIBC_START = {M_MMAP_THRESHOLD: 128 << 10, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
DESCRIBED = "retained (glibc malloc: mmap threshold 32 MiB, trim threshold 1 GiB, top pad 64 MiB)"

_active = 0  # nesting depth of scopes that set the thresholds


def why_not_retained() -> str | None:
    """Why ``retained_heap`` would leave malloc alone here, or None when it would raise the thresholds."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "as the system leaves it (the C library is not glibc)"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
        v in os.environ for v in USER_VARIABLES
    ):
        return "as the environment tunes it (GLIBC_TUNABLES / MALLOC_*_)"
    if _libc() is None:
        return "as the system leaves it (no mallopt in this process)"
    return None


def _libc():
    """The process's C library, if it exports ``mallopt`` and ``malloc_trim``."""
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim")):
        return None
    return libc


def _set(libc, values: dict[int, int]) -> bool:
    """Every option set (not stopping at a refusal, so a restore sets all it can); True if all took."""
    taken = [libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in values.items()]
    return all(taken)


@contextmanager
def retained_heap(enabled: bool = True) -> Iterator[str]:
    """Raise glibc malloc's thresholds for the scope (see the module docstring); yields what it did."""
    global _active
    if _active:  # an outer scope set them and will restore them
        yield DESCRIBED
        return
    reason = "as the system leaves it (asked: retain_heap off)" if not enabled else why_not_retained()
    if reason is not None:
        yield reason
        return
    libc = _libc()
    if not _set(libc, RETAINED):
        _set(libc, GLIBC_START)
        yield "as the system leaves it (mallopt refused the thresholds)"
        return
    _active += 1
    try:
        yield DESCRIBED
    finally:
        _active -= 1
        _set(libc, GLIBC_START)
        libc.malloc_trim(ctypes.c_size_t(0))
