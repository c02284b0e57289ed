"""How the closed loop (``closed_loop``) times a whole planned model: exported exactly as the user receives it,
deployed for the target, and timed against the fp32 original in alternating blocks with the final report's
settings (``runtime.timing.compare``: the median of per-round ratios). Mechanism only; which plans to time, and
when to stop, is ``closed_loop``'s policy.

Example:
    >>> timing = WholeModelTiming(batch=32, seconds=3.0)
    >>> timed, original_bytes, planned_bytes = measure_plan_speedup(module, plan, (x,), timing)
    >>> timed["speedup"]
    2.08
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from convslim.core import Plan
from convslim.passes.apply_plan import apply_plan
from convslim.runtime.export import ExportSettings, export_bytes
from convslim.runtime.measure import measure_models
from convslim.runtime.targets import available_target, get_target
from convslim.runtime.timing import DEFAULT_TIMING, compare


def deployed_bytes(module: nn.Module, example_inputs: tuple, target, calibration=None, opset=None) -> bytes:
    """``module`` exported as the user receives it (``runtime.export_bytes``, at ``opset``) and deployed for
    ``target``."""
    exported = export_bytes(module, example_inputs, ExportSettings(opset=opset))
    return get_target(target).deploy_bytes(exported, calibration, as_shipped=True)


@dataclass(frozen=True)
class WholeModelTiming:
    """How a whole planned model is timed: at ``batch`` on ``target`` for ``seconds`` (as the report's own
    measurement), deployed with ``calibration`` (int8), exported at ``opset``, with ``threads`` intra-op threads
    per session (None: ORT's default, as a deployment's session runs)."""

    batch: int
    target: object = "cpu"
    seconds: float = 3.0
    calibration: object = None
    opset: int | None = None
    threads: int | None = None


def measure_plan_speedup(
    module: nn.Module,
    plan: Plan,
    example_inputs: tuple,
    timing: WholeModelTiming,
    original_model: bytes | None = None,
    planned_model: bytes | None = None,
) -> tuple[dict, bytes, bytes]:
    """Whole-model speedup of ``plan`` applied to ``module``, deployed for the target, against the fp32 original
    (``runtime.timing.compare``: median of per-round ratios, per-round spread, runs) and the two models timed
    (original, planned). Models already exported (and deployed) are passed in and not made again."""
    target = available_target(timing.target)
    original_model = original_model or export_bytes(
        module, example_inputs, ExportSettings(opset=timing.opset)
    )
    planned = planned_model or deployed_bytes(
        apply_plan(module, plan), example_inputs, target, timing.calibration, timing.opset
    )
    pair = {"original": original_model, "candidate": planned}
    # the final report's timing (no cap on runs): a cap cut the faster model's later blocks to one run each,
    # so its median came from the first rounds alone and the rounds read 5-15 % above the final measurement
    settings = replace(DEFAULT_TIMING, seconds=timing.seconds, threads=timing.threads)
    timed = measure_models(pair, example_inputs, [timing.batch], target, settings)[str(timing.batch)]
    return compare(timed["original"], timed["candidate"]), original_model, planned
