"""``compress``'s option groups: what to plan for (``Budget``), what to check (``Checks``), where to write
(``Output``). ``compress`` also takes every field as a plain keyword (``out_dir="out"``, ``tolerance=1e-3``):
those are gathered into the groups here, so the keyword API and the objects mean exactly the same.

Example:
    >>> compress(model, x, to="auto", budget=Budget(target_speedup=2.0), output=Output("out", overwrite=True))
    >>> compress(model, x, to="auto", target_speedup=2.0, out_dir="out", overwrite=True)   # the same
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from convslim.errors import UsageError
from convslim.verify.parity import DEFAULT_RTOL


@dataclass(frozen=True)
class Budget:
    """One budget for the budgeted planner (or none: the uniform plan), measured at batch ``plan_batch``."""

    target_speedup: float | None = None
    target_macs: float | None = None
    max_error: float | None = None
    plan_batch: int = 32

    def limits(self) -> dict[str, float | None]:
        return {
            "target_speedup": self.target_speedup,
            "target_macs": self.target_macs,
            "max_error": self.max_error,
        }


@dataclass(frozen=True)
class Checks:
    """Export-and-verify: ONNX parity (``tolerance`` × output scale), and ORT speed at ``batch_sizes``."""

    verify: bool = True
    measure_speed: bool = True
    batch_sizes: Sequence[int] = (1, 32)
    tolerance: float = DEFAULT_RTOL


@dataclass(frozen=True)
class Output:
    """The folder that receives the outputs (all or nothing); an existing non-empty one needs ``overwrite``."""

    out_dir: str | Path | None = None
    overwrite: bool = False


def gather(options: dict[str, Any], **groups: Any) -> tuple[Budget, Checks, Output, dict[str, Any]]:
    """(budget, checks, output, form options) from ``compress``'s keywords and its ``budget``/``checks``/``output``
    objects. A group given both ways is an error (which one should win is not for us to guess)."""
    options = dict(options)
    found = []
    for key, kind in (("budget", Budget), ("checks", Checks), ("output", Output)):
        loose = {f.name: options.pop(f.name) for f in fields(kind) if f.name in options}
        given = groups.get(key)
        if given is not None and loose:
            raise UsageError(f"pass either {key}= or {', '.join(sorted(loose))}=, not both")
        if given is not None and not isinstance(given, kind):
            raise UsageError(f"{key}= takes a convslim.options.{kind.__name__}, got {type(given).__name__}")
        found.append(given if given is not None else replace(kind(), **loose))
    return (*found, options)
