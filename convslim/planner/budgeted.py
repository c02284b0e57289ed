"""Budgeted, latency-aware planning: per conv, the form and setting that meet a budget with the least damage.

Method: (1) candidates per conv from the grid of every allowed form (``candidates``); (2) each candidate's
latency measured in ONNX Runtime against the original conv in the same run, cached on disk (``latency``);
(3) its damage, the model's relative output error with only that layer rewritten (``damage``); (4) a greedy
multiple-choice knapsack picks one candidate or none per layer (``budget``). The whole BN-folded model is timed
once as deployed; the predicted time is that minus the chosen layers' measured savings, scaled to the model so
they cannot exceed its time (``compose``). Speedups are against the fp32 original, the model the user runs
today: for ``cpu-int8`` the saving asked is from the int8 original, as shipped, down to fp32 time / target.

Budgets (one): ``target_speedup`` (predicted whole-model ORT speedup at ``batch``), ``target_macs`` (fraction
of the original conv MACs), ``max_error`` (predicted relative output error, √Σ damage²).

Example:
    >>> prepared = prepare(model, torch.randn(1, 3, 32, 32))
    >>> plan = plan_to_budget(prepared, to="auto", target_speedup=2.0)
    >>> plan.planning["predicted_speedup"], plan.planning["planning_s"]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from convslim.core import LayerDecision, Plan, Prepared, dense_cost
from convslim.errors import UsageError
from convslim.planner.budget import Choice, Selection, blend, select
from convslim.planner.candidates import Candidate, candidates_for, parse_forms
from convslim.planner.closed_loop import deployed_bytes, measure_plan_speedup, search
from convslim.planner.compose import layer_scale, layer_total, max_multiplier, predicted_time
from convslim.planner.damage import measure_damage, probe_inputs
from convslim.planner.latency import LatencyCache, measure_candidates, time_model
from convslim.planner.uniform import decide, site_skip_reason
from convslim.planner.verdict import layer_timings, verdict
from convslim.runtime.export import ExportSettings, export_bytes
from convslim.runtime.int8 import Calibration
from convslim.runtime.targets import available_target

# a whole-model round of the closed loop is timed this many times longer than one candidate (0.3 s → 3 s, as
# the report's own measurement)
ROUND_SECONDS_FACTOR = 10


def check_budget(target_speedup=None, target_macs=None, max_error=None) -> str:
    """Which budget was given (exactly one), after checking its value; the message says what to pass."""
    given = {
        k: v
        for k, v in (
            ("target_speedup", target_speedup),
            ("target_macs", target_macs),
            ("max_error", max_error),
        )
        if v is not None
    }
    if len(given) != 1:
        raise UsageError("give exactly one budget: --target-speedup X, --target-macs F or --max-error E")
    ((name, value),) = given.items()
    if name == "target_speedup" and not value > 1:
        raise UsageError(f"--target-speedup {value}: must be above 1 (e.g. 2.0)")
    if name == "target_macs" and not 0 < value < 1:
        raise UsageError(f"--target-macs {value}: must be a fraction of the original MACs in (0, 1)")
    if name == "max_error" and not value > 0:
        raise UsageError(f"--max-error {value}: must be a positive relative output error (e.g. 0.1)")
    return name


def plan_to_budget(
    prepared: Prepared,
    to: str | Sequence[str] = "auto",
    *,
    target_speedup: float | None = None,
    target_macs: float | None = None,
    max_error: float | None = None,
    batch: int = 32,
    target="cpu",
    calibration: torch.Tensor | None = None,
    exclude: Sequence[str] = (),
    cache: LatencyCache | None = None,
    seconds: float = 0.3,
    grid: dict | None = None,
    progress: bool = False,
    opset: int | None = None,
) -> Plan:
    """Measure every candidate of every conv of ``prepared`` on ``target`` (``cpu-int8``: in int8) and choose per
    layer to meet the one budget given. Whole models are exported at ``opset``, as the pipeline will ship them.

    ``seconds`` is the time spent timing each candidate; each whole-model round of the closed loop (speed
    budgets) takes ``ROUND_SECONDS_FACTOR`` times as long, since it decides the final plan."""
    start = time.perf_counter()
    target = available_target(target)
    budget = check_budget(target_speedup, target_macs, max_error)
    if len(prepared.example_inputs) != 1:
        raise UsageError("budgeted planning takes single-input models; plan with --to FORM and its options")
    if batch < 1:
        raise UsageError(f"--plan-batch {batch}: must be a positive batch size")
    forms = parse_forms(to)
    cache = cache if cache is not None else LatencyCache()
    sites = {s.name: s for s in prepared.sites}
    skipped, per_layer, reasons = _gather(prepared.sites, forms, exclude, grid)
    everything = [c for cands in per_layer.values() for c in cands]
    module = prepared.traced.module
    measure_candidates(module, sites, everything, batch, target, cache, seconds, progress)
    # damage only where it can matter: a candidate measured slower than its layer is never chosen
    faster = [c for c in everything if c.measured.get("ratio", float("inf")) < 1.0]
    probe = probe_inputs(prepared.example_inputs, calibration)
    measure_damage(module, faster, probe, progress, refit=calibration is not None)
    deploy_calibration = None if calibration is None else Calibration(calibration[:256])
    model_seconds = max(5 * seconds, 0.1)  # the whole model is timed longer than one layer
    original_onnx, reference_s, base_s = _original_times(
        prepared, target, batch, model_seconds, deploy_calibration, opset
    )
    total_macs = sum(dense_cost(s).macs for s in prepared.sites)
    scale = layer_scale(base_s, layer_total(per_layer))  # see compose: per-layer savings scaled to the model
    table = {layer: [_choice(c, budget, scale) for c in cands] for layer, cands in per_layer.items()}
    need = max_energy = None
    if budget == "target_speedup":
        need = max(base_s - reference_s / target_speedup, 0.0)  # from the deployed original to the target
    elif budget == "target_macs":
        need = total_macs * (1 - target_macs)
    else:
        max_energy = max_error**2
    build = _PlanBuilder(prepared, per_layer, skipped, reasons, scale)
    chosen = select(table, need=need, max_energy=max_energy)
    layers, saved = build(chosen)
    rounds, measured = [], None
    if budget == "target_speedup":
        round_s = seconds * ROUND_SECONDS_FACTOR
        loop = _Loop(prepared, target, batch, original_onnx, round_s, progress, deploy_calibration, opset)
        goal = SpeedGoal(target_speedup, need, base_s)
        chosen, layers, saved, rounds, measured = _close_the_loop(loop, goal, table, build)
    timings = layer_timings(layers)
    said = verdict(timings, rounds)
    if said is not None and chosen.choice:  # nothing measured faster as a whole: keep the model as it is
        chosen = Selection(reached=False)
        layers, saved = build(chosen)
        timings, measured = layer_timings(layers), None
        for r in rounds:
            r.pop("chosen", None)
    predicted_s = predicted_time(base_s, saved)
    macs_after = sum(d.macs_after for d in layers)
    used = sorted({d.form for d in layers if d.form})
    predicted = reference_s / predicted_s
    planning = {
        "budget": {
            budget: {"target_speedup": target_speedup, "target_macs": target_macs, "max_error": max_error}[
                budget
            ]
        },
        "forms": forms,
        "batch": batch,
        "target": target.name,
        "precision": target.precision,
        "speedup_against": "original fp32",
        "provider": target.providers[0],
        "original_onnx_sha256": _sha(original_onnx),
        "reached": chosen.reached if measured is None else measured >= target_speedup,
        "original_ms": reference_s * 1e3,
        "deployed_original_ms": base_s * 1e3,
        "predicted_ms": predicted_s * 1e3,
        "layer_scale": scale,
        "predicted_speedup": predicted if measured is None else measured,  # closed loop: its measurement
        "layer_sum_speedup": predicted,
        "rounds": rounds,
        "predicted_error": chosen.predicted_error,
        "verdict": said,
        "layer_timings": timings,
        "predicted_macs_fraction": macs_after / total_macs if total_macs else 1.0,
        "candidates": len(everything),
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "planning_s": time.perf_counter() - start,
    }
    label = "+".join(used) or "none"
    return Plan(
        form=label, options={"to": ",".join(forms), **planning["budget"]}, layers=layers, planning=planning
    )


def _original_times(prepared: Prepared, target, batch: int, seconds: float, calibration, opset):
    """The fp32 original's ONNX bytes and time (speedups are against it: the model the user runs today, whatever
    precision is deployed), and the time of the original deployed for ``target`` (int8: as shipped, where the
    plan starts from; the same model otherwise)."""
    module, example = prepared.traced.module, prepared.example_inputs
    original_onnx = export_bytes(module, example, ExportSettings(opset=opset))
    reference_s = time_model(original_onnx, example, batch, target, seconds=seconds)
    if target.precision == "fp32":
        return original_onnx, reference_s, reference_s
    deployed = deployed_bytes(module, example, target, calibration, opset)
    return original_onnx, reference_s, time_model(deployed, example, batch, target, seconds=seconds)


class _PlanBuilder:
    """Turns a selection into the plan's layer decisions and the summed measured saving (seconds)."""

    def __init__(self, prepared, per_layer, skipped, reasons, scale: float = 1.0):
        self.prepared, self.per_layer, self.skipped, self.reasons = prepared, per_layer, skipped, reasons
        self.scale = scale

    def __call__(self, chosen) -> tuple[list[LayerDecision], float]:
        layers = _decisions(self.prepared.sites, self.per_layer, chosen.choice, self.skipped, self.reasons)
        layers += [LayerDecision.skipped(n, r) for n, r in self.prepared.traced.unconvertible.items()]
        saved = self.scale * sum(
            c.measured["saved_s"]
            for cands in self.per_layer.values()
            for c in cands
            if chosen.choice.get(c.layer) == c.key
        )
        return layers, saved


@dataclass
class _Loop:
    """What the closed loop measures with: the target, the batch, the original as it was timed, and how long
    each whole-model measurement takes."""

    prepared: Prepared
    target: object
    batch: int
    original_onnx: bytes
    seconds: float
    progress: bool = False
    calibration: object = None
    opset: int | None = None


@dataclass(frozen=True)
class SpeedGoal:
    """A speed budget: the target speedup, the saving (s) it asks of the selector, the original's time (s)."""

    target: float
    need: float
    base_s: float


def _close_the_loop(loop: _Loop, goal: SpeedGoal, table: dict, build: _PlanBuilder):
    """Search on whole-model measurements (see closed_loop); returns the winner and the rounds, each round with
    its speedup's spread and runs and the SHA-256 of the planned model it timed (the bytes the user receives)."""
    details: list[dict] = []

    def select_at(multiplier: float):
        chosen = select(table, need=goal.need * multiplier)
        return (chosen, *build(chosen))

    def measure(layers) -> float:
        timed, _, planned = measure_plan_speedup(
            loop.prepared.traced.module,
            Plan(form="budget", options={}, layers=layers),
            loop.prepared.example_inputs,
            loop.batch,
            loop.target,
            seconds=loop.seconds,
            original_model=loop.original_onnx,
            calibration=loop.calibration,
            opset=loop.opset,
        )
        details.append({k: timed[k] for k in ("speedup_iqr", "runs")} | {"onnx_sha256": _sha(planned)})
        return timed["speedup"]

    def between(slow, fast):
        blended = blend(table, slow[0], fast[0])
        return None if blended is None else (blended, *build(blended))

    cap = max_multiplier(table, goal.need)
    (chosen, layers, saved), rounds = search(
        select_at, measure, goal.target, goal.base_s, loop.progress, between, cap
    )
    measured = iter(details)  # one detail per measurement; a confirmed round was measured twice
    for r in rounds:
        taken = [next(measured) for _ in r["measurements"]]
        r.update(taken[-1], runs=sum(d["runs"] for d in taken))
    winner = next((r for r in rounds if r.get("chosen")), None)
    return chosen, layers, saved, rounds, (winner["measured_speedup"] if winner else None)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _gather(sites, forms, exclude, grid):
    skipped: dict[str, str] = {}
    per_layer: dict[str, list[Candidate]] = {}
    reasons: dict[str, list[str]] = {}
    for site in sites:
        reason = site_skip_reason(site, exclude)
        if reason is not None:
            skipped[site.name] = reason
        else:
            per_layer[site.name], reasons[site.name] = candidates_for(site, forms, grid)
    return skipped, per_layer, reasons


def _choice(c: Candidate, budget: str, scale: float = 1.0) -> Choice:
    m = c.measured
    if "error" in m or "damage" not in m:
        return Choice(c.layer, c.key, saving=0.0, damage=float("nan"), ratio=float("inf"))
    saving = m["saved_s"] * scale if budget != "target_macs" else float(c.dense_macs - c.macs)
    return Choice(c.layer, c.key, saving=saving, damage=m["damage"], ratio=m["ratio"])


def _summary(c: Candidate) -> dict:
    m = c.measured
    if "error" in m:
        return {"form": c.form, "options": c.options, "error": m["error"]}
    return {
        "form": c.form,
        "options": c.options,
        "ratio": round(m["ratio"], 4),
        "damage": round(m["damage"], 6) if "damage" in m else None,  # None: slower, so not worth measuring
        "saved_ms": round(m["saved_s"] * 1e3, 4),
        "orig_ms": round(m["orig_s"] * 1e3, 4),
        "cand_ms": round(m["cand_s"] * 1e3, 4),
    }


def _decisions(sites, per_layer, choice, skipped, reasons) -> list[LayerDecision]:
    layers = []
    for site in sites:
        if site.name in skipped:
            layers.append(decide(site, None, {}, reason=skipped[site.name]))
            continue
        cands = per_layer[site.name]
        tried = [_summary(c) for c in cands]
        picked = next((c for c in cands if choice.get(site.name) == c.key), None)
        if picked is None:
            decision = decide(site, None, {}, reason=_why_kept(cands, reasons[site.name]))
        else:
            decision = decide(site, picked.form, picked.setting)
        measured = {"candidates": tried}
        if picked is not None:
            measured.update(
                chosen=picked.key,
                **{k: v for k, v in _summary(picked).items() if k not in ("form", "options")},
            )
        layers.append(replace(decision, measured=measured))
    return layers


def _why_kept(cands: list[Candidate], reasons: list[str]) -> str:
    if not cands:
        return "no form applies: " + ("; ".join(reasons[:3]) or "no candidates")
    ok = [c for c in cands if "error" not in c.measured and c.measured.get("ratio", 2.0) < 1.0]
    if not ok:
        return "every candidate measured as slow as or slower than the original layer"
    return "budget met without rewriting this layer"
