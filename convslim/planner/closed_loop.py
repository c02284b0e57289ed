"""Closing the loop on speed: plan, build, time the whole model, correct, plan again.

Per-layer micro-benchmarks overstate what a layer costs inside the whole model: alone, every conv pays ORT's
layout reorders (NCHW ↔ NCHWc) at its input and output, while inside the model consecutive convs stay in the
blocked layout. Measured on ResNet-20 at batch 32 the per-layer savings summed to a predicted 2.50× that
measured 1.71× as a whole model. So for a speedup budget the planner builds the chosen plan, times it against
the original in one interleaved ORT run, and scales every per-layer saving by

    k = (1 − 1/s_measured) / (1 − 1/s_predicted)      (the share of the predicted saving that materialised)

before choosing again with the need divided by k, for a few rounds. The round whose measured speedup is the
smallest one at or above the target wins (least damage); if none reaches it, the fastest round.

Example:
    >>> speedup = measure_plan_speedup(prepared.traced.module, plan, example_inputs, batch=32)
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from convslim.passes.apply_plan import apply_plan
from convslim.plan import Plan
from convslim.planner.latency import _session, check_provider, interleaved, onnx_bytes

MAX_ROUNDS = 4
OVERSHOOT = 1.08  # a round measuring within [target, target·1.08] ends the search


def measure_plan_speedup(
    module: nn.Module,
    plan: Plan,
    example_inputs: tuple,
    batch: int,
    provider: str = "CPUExecutionProvider",
    seconds: float = 2.0,
    original_model: bytes | None = None,
) -> tuple[float, bytes]:
    """Whole-model speedup of ``plan`` applied to ``module`` (interleaved medians) and the original's ONNX."""
    check_provider(provider)
    example = torch.randn((batch, *example_inputs[0].shape[1:]), generator=torch.Generator().manual_seed(0))
    original_model = original_model or onnx_bytes(module, example)
    compressed = apply_plan(module, plan)
    sessions = {
        "original": _session(original_model, provider),
        "candidate": _session(onnx_bytes(compressed, example), provider),
    }
    times = interleaved(sessions, example.numpy(), seconds, min_runs=10)
    return statistics.median(times["original"]) / statistics.median(times["candidate"]), original_model


def correction(predicted_speedup: float, measured_speedup: float) -> float:
    """k: the share of the predicted saving that the whole model showed (clamped to stay usable)."""
    predicted = 1 - 1 / max(predicted_speedup, 1 + 1e-9)
    measured = 1 - 1 / max(measured_speedup, 1e-9)
    return min(max(measured / predicted, 0.05), 2.0)


def pick_round(rounds: list[dict], target: float) -> dict:
    """The least-speedup round that reaches the target (least damage), else the fastest."""
    reaching = [r for r in rounds if r["measured_speedup"] >= target]
    if reaching:
        return min(reaching, key=lambda r: r["measured_speedup"])
    return max(rounds, key=lambda r: r["measured_speedup"])
