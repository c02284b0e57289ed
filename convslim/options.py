"""``compress``'s option groups: what to plan for (``Budget``), what to check (``Checks``), where to write
(``Output``). ``compress`` also takes every field as a plain keyword (``out_dir="out"``, ``tolerance=1e-3``):
those are gathered into the groups here, so the keyword API and the objects mean exactly the same. Everything
``compress`` (or ``finetune_output``) was given ends up in one ``CompressOptions``.

Example:
    >>> compress(model, x, to="auto", budget=Budget(target_speedup=2.0), output=Output("out", overwrite=True))
    >>> compress(model, x, to="auto", target_speedup=2.0, out_dir="out", overwrite=True)   # the same
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from convslim.errors import UsageError
from convslim.verify.parity import DEFAULT_RTOL


def wants_budgeted(to: str, budget: dict) -> bool:
    """``--to auto``, ``--to a,b`` or any budget flag → the budgeted planner; else the uniform per-form plan."""
    return any(v is not None for v in budget.values()) or to == "auto" or "," in to


@dataclass(frozen=True)
class Budget:
    """One budget for the budgeted planner (or none: the uniform plan), measured at batch ``plan_batch`` with
    ``plan_threads`` ORT intra-op threads per session (None: ORT's default, as the deployment runs)."""

    target_speedup: float | None = None
    target_macs: float | None = None
    max_error: float | None = None
    plan_batch: int = 32
    plan_threads: int | None = None

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
    """The folder that receives the outputs (all or nothing); an existing non-empty one needs ``overwrite``.
    ``files``: more files the caller asked for, file name → ``write(path)`` (e.g. the synthetic images)."""

    out_dir: str | Path | None = None
    overwrite: bool = False
    files: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)


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


@dataclass(frozen=True)
class CompressOptions:
    """Everything ``compress`` takes besides the model, its inputs, the form and a ready plan: the three groups,
    the run's inputs (``calibration`` images, the ``finetune`` hook, layers to ``exclude``), the deployment
    (``runtime.deploy.DeploySettings``; None: fp32 on the CPU), progress bars, facts for the report's ``run``
    section (``record``) and the form's own options (``rank``, ``energy`` ...)."""

    budget: Budget = field(default_factory=Budget)
    checks: Checks = field(default_factory=Checks)
    output: Output = field(default_factory=Output)
    calibration: Any = None  # a batch of real inputs (torch.Tensor)
    finetune: Callable | None = None
    exclude: tuple[str, ...] = ()
    progress: bool = False
    deploy: Any = None  # runtime.deploy.DeploySettings
    record: dict | None = None
    form_options: dict[str, Any] = field(default_factory=dict)

    def check(self, to: str, planned: bool = False) -> None:
        """Every value that can be checked before any work: the form(s) ``to`` names and their options (none
        when ``planned``: a plan fixes them), the budget, the checks' numbers. Layers named in ``exclude`` are
        checked once the model is traced (``planner.uniform.check_exclude``)."""
        from convslim.convert import get_form
        from convslim.planner import check_budget, check_plan_threads, parse_forms

        checks, limits = self.checks, self.budget.limits()
        if not (isinstance(checks.tolerance, (int, float)) and 0 <= checks.tolerance < math.inf):
            raise UsageError(f"--tolerance {checks.tolerance}: must be a finite number ≥ 0")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in checks.batch_sizes):
            raise UsageError(
                f"--batch-sizes {list(checks.batch_sizes)}: expected positive integers like 1,32"
            )
        if isinstance(self.budget.plan_batch, bool) or not self.budget.plan_batch >= 1:
            raise UsageError(f"--plan-batch {self.budget.plan_batch}: must be a positive batch size")
        check_plan_threads(self.budget.plan_threads)
        if planned:
            return
        if wants_budgeted(to, limits):
            parse_forms(to)
            check_budget(**limits)
        else:
            get_form(to).check_options(self.form_options)

    @classmethod
    def of(cls, options: dict[str, Any], allowed: Sequence[str] | None = None, caller: str = "compress"):
        """From keywords: the group objects or their fields, the other fields of this class, and (when ``allowed``
        is None) the form's options. With ``allowed``, any other keyword is a ``UsageError``."""
        options = dict(options)
        own = {
            f.name: options.pop(f.name) for f in fields(cls) if f.name in options and f.name != "form_options"
        }
        groups = {k: own.pop(k) for k in ("budget", "checks", "output") if k in own}
        if allowed is not None:
            extra = sorted(k for k in [*own, *groups, *options] if k not in allowed)
            if extra:
                raise UsageError(f"{caller} does not take {', '.join(extra)}=")
        budget, checks, output, form_options = gather(options, **groups)
        own["exclude"] = tuple(own.get("exclude") or ())
        return cls(budget, checks, output, **own, form_options=form_options)
