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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from convslim.core import LayerDecision, Plan, Prepared, dense_cost
from convslim.core.samples import CALIBRATION_BATCH
from convslim.planner.budget import Selection, blend, select
from convslim.planner.candidates import Candidate
from convslim.planner.closed_loop import SearchOptions, search
from convslim.planner.compose import layer_scale, layer_total, max_multiplier, predicted_time
from convslim.planner.damage import measure_damage, probe_inputs
from convslim.planner.latency import LatencyCache, measure_candidates, time_model
from convslim.planner.request import PlanRequest
from convslim.planner.table import PlanBuilder, choice_of, gather_candidates, macs_table
from convslim.planner.verdict import layer_timings, verdict
from convslim.planner.whole_model import WholeModelTiming, measure_plan_speedup
from convslim.runtime.export import ExportSettings, export_bytes
from convslim.runtime.int8 import Calibration

# a whole-model round of the closed loop is timed this many times longer than one candidate (0.3 s → 3 s, as
# the report's own measurement)
ROUND_SECONDS_FACTOR = 10


def plan_to_budget(prepared: Prepared, to: str | Sequence[str] = "auto", **options) -> Plan:
    """Measure every candidate of every conv of ``prepared`` on ``target`` (``cpu-int8``: in int8) and choose per
    layer to meet the one budget given. ``options``: one of ``target_speedup``, ``target_macs``, ``max_error``,
    and the fields of ``PlanRequest`` (``batch``, ``target``, ``calibration``, ``exclude``, ``cache``,
    ``seconds``, ``grid``, ``progress``, ``opset``, ``threads``).

    ``seconds`` is the time spent timing each candidate; each whole-model round of the closed loop (speed
    budgets) takes ``ROUND_SECONDS_FACTOR`` times as long, since it decides the final plan."""
    start = time.perf_counter()
    request = PlanRequest.of(prepared, to, options)
    cache = request.cache if request.cache is not None else LatencyCache()
    layers = _measure_layers(prepared, request, cache)
    calibration = (
        None if request.calibration is None else Calibration(request.calibration[:CALIBRATION_BATCH])
    )
    original = _original_times(prepared, request, calibration)
    scale = layer_scale(original.base_s, layer_total(layers.per_layer))  # see compose: scaled to the model
    table = {
        layer: [choice_of(c, request.budget, scale) for c in cands]
        for layer, cands in layers.per_layer.items()
    }
    build = PlanBuilder(prepared, layers.per_layer, layers.skipped, layers.reasons, scale)
    total_macs = sum(dense_cost(s).macs for s in prepared.sites)
    loop = _Loop(prepared, request, original.onnx, calibration)
    outcome = _choose(request, table, build, loop, original, total_macs)
    planning = _planning(request, original, outcome, scale, total_macs)
    planning.update(candidates=len(layers.everything), cache_hits=cache.hits, cache_misses=cache.misses)
    planning["cache_check"] = cache.check
    planning["planning_s"] = time.perf_counter() - start
    label = "+".join(sorted({d.form for d in outcome.layers if d.form})) or "none"
    options = {"to": ",".join(request.forms), **planning["budget"]}
    return Plan(form=label, options=options, layers=outcome.layers, planning=planning)


@dataclass(frozen=True)
class _Layers:
    """Every layer's candidates, measured (latency, and damage where it can matter), and why others are kept."""

    skipped: dict[str, str]
    per_layer: dict[str, list[Candidate]]
    reasons: dict[str, list[str]]
    everything: list[Candidate]


def _measure_layers(prepared: Prepared, request: PlanRequest, cache: LatencyCache) -> _Layers:
    sites = {s.name: s for s in prepared.sites}
    skipped, per_layer, reasons = gather_candidates(
        prepared.sites, request.forms, request.exclude, request.grid
    )
    everything = [c for cands in per_layer.values() for c in cands]
    module = prepared.traced.module
    measure_candidates(module, sites, everything, request.layer_timing(), cache)
    # damage only where it can matter: a candidate measured slower than its layer is never chosen
    faster = [c for c in everything if c.measured.get("ratio", float("inf")) < 1.0]
    probe = probe_inputs(prepared.example_inputs, request.calibration)
    measure_damage(module, faster, probe, request.progress, refit=request.calibration is not None)
    return _Layers(skipped, per_layer, reasons, everything)


@dataclass(frozen=True)
class _Original:
    """The fp32 original's ONNX bytes and time (speedups are against it) and the time of the original deployed
    for the target (``base_s``: int8 as shipped, where the plan starts from; else the same)."""

    onnx: bytes
    reference_s: float
    base_s: float


def _original_times(prepared: Prepared, request: PlanRequest, calibration) -> _Original:
    module, example = prepared.traced.module, prepared.example_inputs
    seconds = max(5 * request.seconds, 0.1)  # the whole model is timed longer than one layer
    target, batch = request.target, request.batch
    original_onnx = request.original_onnx or export_bytes(
        module, example, ExportSettings(opset=request.opset)
    )
    reference_s = time_model(original_onnx, example, batch, target, seconds=seconds)
    if target.precision == "fp32":
        return _Original(original_onnx, reference_s, reference_s)
    deployed = target.deploy_bytes(original_onnx, calibration, as_shipped=True)  # the same export, quantized
    return _Original(
        original_onnx, reference_s, time_model(deployed, example, batch, target, seconds=seconds)
    )


@dataclass(frozen=True)
class _Outcome:
    """The selection chosen, its layer decisions, their summed saving (s), the closed loop's rounds, the winning
    round's measured speedup (None: no closed loop, or nothing kept), the verdict (why nothing was rewritten) and
    the per-layer timings."""

    chosen: Selection
    layers: list[LayerDecision]
    saved: float
    rounds: list[dict]
    measured: float | None
    verdict: str | None
    timings: list[dict]


def _choose(request: PlanRequest, table: dict, build, loop, original: _Original, macs: int) -> _Outcome:
    """Select on the predicted table; a speed budget then searches on whole-model measurements; when nothing
    measured faster as a whole, the model is kept as it is."""
    need = max_energy = None
    if request.budget == "target_speedup":  # from the deployed original to the target
        need = max(original.base_s - original.reference_s / request.value, 0.0)
    elif request.budget == "target_macs":
        need = macs * (1 - request.value)
    else:
        max_energy = request.value**2
    chosen = select(table, need=need, max_energy=max_energy)
    layers, saved = build(chosen)
    rounds, measured = [], None
    if request.budget == "target_speedup":
        goal = SpeedGoal(request.value, need, original.base_s)
        chosen, layers, saved, rounds, measured = _close_the_loop(loop, goal, table, build)
    timings = layer_timings(layers)
    said = verdict(timings, rounds)
    if said is not None and chosen.choice:  # nothing measured faster as a whole: keep the model as it is
        chosen = Selection(reached=False)
        layers, saved = build(chosen)
        timings, measured = layer_timings(layers), None
        for r in rounds:
            r.pop("chosen", None)
    return _Outcome(chosen, layers, saved, rounds, measured, said, timings)


def _planning(request: PlanRequest, original: _Original, outcome: _Outcome, scale: float, macs: int) -> dict:
    """The plan's ``planning`` record: the budget, what was measured and predicted, the rounds, the verdict."""
    predicted_s = predicted_time(original.base_s, outcome.saved)
    predicted = original.reference_s / predicted_s
    measured, target = outcome.measured, request.target
    return {
        "budget": {request.budget: request.value},
        "forms": request.forms,
        "batch": request.batch,
        "round_threads": request.threads,  # ORT intra-op threads of the closed loop's rounds (None: default)
        "target": target.name,
        "precision": target.precision,
        "speedup_against": "original fp32",
        "provider": target.providers[0],
        "original_onnx_sha256": _sha(original.onnx),
        "reached": outcome.chosen.reached if measured is None else measured >= request.value,
        "original_ms": original.reference_s * 1e3,
        "deployed_original_ms": original.base_s * 1e3,
        "predicted_ms": predicted_s * 1e3,
        "layer_scale": scale,
        "predicted_speedup": predicted if measured is None else measured,  # closed loop: its measurement
        "layer_sum_speedup": predicted,
        "rounds": outcome.rounds,
        "predicted_error": outcome.chosen.predicted_error,
        "verdict": outcome.verdict,
        "layer_timings": outcome.timings,
        "predicted_macs_fraction": sum(d.macs_after for d in outcome.layers) / macs if macs else 1.0,
    }


@dataclass(frozen=True)
class _Loop:
    """What the closed loop measures with: the model, the request (target, batch, opset, progress), the original
    as it was timed and the int8 calibration; each whole-model round takes ``ROUND_SECONDS_FACTOR`` times the
    seconds of one candidate."""

    prepared: Prepared
    request: PlanRequest
    original_onnx: bytes
    calibration: object = None

    def timing(self) -> WholeModelTiming:
        r = self.request
        return WholeModelTiming(
            r.batch, r.target, r.seconds * ROUND_SECONDS_FACTOR, self.calibration, r.opset, r.threads
        )


@dataclass(frozen=True)
class SpeedGoal:
    """A speed budget: the target speedup, the saving (s) it asks of the selector, the original's time (s)."""

    target: float
    need: float
    base_s: float


def _close_the_loop(loop: _Loop, goal: SpeedGoal, table: dict, build: PlanBuilder):
    """Search on whole-model measurements (see closed_loop); returns the winner and the rounds, each round with
    its speedup's spread and runs and the SHA-256 of the planned model it timed (the bytes the user receives)."""
    details: list[dict] = []
    built: dict[str, bytes] = {}  # a round measured twice (confirmed) is exported and deployed once

    def select_at(multiplier: float):
        chosen = select(table, need=goal.need * multiplier)
        return (chosen, *build(chosen))

    def measure(layers) -> float:
        key = repr([(d.name, d.form, d.setting) for d in layers])
        timed, _, planned = measure_plan_speedup(
            loop.prepared.traced.module,
            Plan(form="budget", options={}, layers=layers),
            loop.prepared.example_inputs,
            loop.timing(),
            original_model=loop.original_onnx,
            planned_model=built.get(key),
        )
        built[key] = planned
        details.append(
            {k: timed[k] for k in ("speedup_iqr", "runs")}
            | {"onnx_sha256": _sha(planned), "selection": selection_summary(layers)}
        )
        return timed["speedup"]

    def between(slow, fast):
        blended = blend(table, slow[0], fast[0])
        return None if blended is None else (blended, *build(blended))

    def fewest_macs():
        chosen = select(macs_table(build.per_layer), need=float("inf"))  # every layer's largest MAC saving
        return (chosen, *build(chosen))

    cap = max_multiplier(table, goal.need)
    options = SearchOptions(between, cap, loop.request.progress, fewest_macs)
    (chosen, layers, saved), rounds = search(select_at, measure, goal.target, goal.base_s, options)
    measured = iter(details)  # one detail per measurement; a confirmed round was measured twice
    for r in rounds:
        taken = [next(measured) for _ in r["measurements"]]
        r.update(taken[-1], runs=sum(d["runs"] for d in taken))
    winner = next((r for r in rounds if r.get("chosen")), None)
    return chosen, layers, saved, rounds, (winner["measured_speedup"] if winner else None)


def selection_summary(layers) -> dict[str, int]:
    """How many layers a round rewrote with each (form, setting), most first: what the round's speedup bought.

    Example: ``{"dwsep rank=1": 28, "spatial rank=48": 2}``."""
    counts = Counter(
        f"{d.form} " + " ".join(f"{k}={v}" for k, v in d.setting.items() if k != "emission")
        for d in layers
        if d.form
    )
    return dict(counts.most_common())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
