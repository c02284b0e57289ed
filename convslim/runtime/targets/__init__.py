"""Runtime targets, keyed by the string the CLI takes (``--runtime cpu``, ``cpu-int8``, ``cuda``, ``tensorrt``).

A target says whether it can run here, how to turn the exported fp32 ONNX file into what it deploys (int8
quantizes it; the others ship it as is) and how to open a session on it. Adding one is one new module here that
calls ``register_target``; the CLI's choices and the API read this registry.

Example:
    >>> target = get_target("cpu-int8")
    >>> target.precision, target.unavailable()
    ('int8', None)
"""

from __future__ import annotations

from convslim.runtime.targets import cpu, cpu_int8, cuda, tensorrt  # noqa: F401  (each registers itself)
from convslim.runtime.targets.base import Target
from convslim.runtime.targets.registry import available_target, get_target, register_target, target_names

__all__ = ["Target", "available_target", "get_target", "register_target", "target_names"]
