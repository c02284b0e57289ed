"""What this machine is, read once from ``/proc/cpuinfo``: the CPU model (latency cache keys, the report's run
section) and its instruction-set flags (int8 needs to know about VNNI).

Example:
    >>> cpu_model(), "avx2" in cpu_flags()
    ('AMD EPYC 7B13', True)
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines ({} where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC 7B13" (elsewhere: what ``platform`` knows)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_name() -> str:
    """The model name and the logical core count, as the report shows them."""
    return f"{cpu_model()} ({os.cpu_count()} logical cores)"


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags (``avx2``, ``avx512_vnni`` ...); empty where they cannot be read."""
    return frozenset(_cpuinfo().get("flags", "").split())
