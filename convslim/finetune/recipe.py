"""Brief fine-tuning that wins back accuracy after rewriting: stage 1 reconstruction, stage 2 distillation.

Recipe (``run``): (0) score the original and the compressed model on the validation data; (1) refit each
rewritten layer to the original layer's outputs on ~1k calibration images (``reconstruct``); (2) put a
BatchNorm after every replacement that can absorb it again (``affine``), train block-wise against the teacher's
features (phase A), then end-to-end KD + CE (phase B), validating at intervals and keeping the best weights;
fold the BatchNorms back, so the model is exactly what the plan builds (ONNX export and ``load_compressed``
work unchanged). If stage 2 ends below stage 1 on the validation data, the stage-1 weights are returned.
Ctrl-C / SIGTERM stop cleanly with the best weights so far (``interrupted`` in the report).

The budget (``steps`` and/or ``minutes``) covers the whole run; phase A gets ``feature_fraction`` of what is
left after stage 1.

Example:
    >>> model, report = run(prepared, compressed, plan, train, val, FinetuneSettings(steps=300))
    >>> report["accuracy"]
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from convslim import parallel
from convslim.core import Plan, Prepared
from convslim.core.heap import retained_heap
from convslim.finetune.affine import unwrap_all, wrap_all
from convslim.finetune.batches import layout, training_batches
from convslim.finetune.distill import feature_phase, kd_phase
from convslim.finetune.feed import evaluate, take
from convslim.finetune.loop import Phase
from convslim.finetune.reconstruct import RefitSettings, recalibrate_batchnorm, reconstruct
from convslim.finetune.replay import TeacherLog
from convslim.finetune.settings import DEFAULT_STEPS, FinetuneSettings
from convslim.finetune.stopping import StopFlag, TrainBudget, interruptible
from convslim.finetune.teacher import StageTeacher, autocast_dtype

RISING_GAIN = 0.001  # a validation gain above 0.1 pt over phase B's last check counts as still rising


@dataclass
class Stage:
    """What every stage works with: both models, the data, the settings and the run's clock and stop flag."""

    teacher: nn.Module
    student: nn.Module
    names: list[str]  # the rewritten layers, in graph order
    train: Any
    calib: list  # (x, y) calibration batches, already in the training layout
    settings: FinetuneSettings
    budget: TrainBudget
    stop: StopFlag
    gen: torch.Generator
    device: torch.device
    score: Callable[[nn.Module], float | None]

    def seconds_left(self) -> float | None:
        return (self.budget.seconds - self.budget.elapsed()) if self.budget.seconds else None


@dataclass
class Stage2Result:
    """Stage 2's best weights (None: nothing to keep by), the layers wrapped with a BatchNorm, its report."""

    best: dict | None
    wrapped: list[str]
    report: dict


def run(prepared: Prepared, compressed: nn.Module, plan: Plan, train, val, s: FinetuneSettings):
    with retained_heap(s.retain_heap) as heap:
        model, report = _run(prepared, compressed, plan, train, val, s)
    report["heap"] = heap
    return model, report


def _run(prepared: Prepared, compressed: nn.Module, plan: Plan, train, val, s: FinetuneSettings):
    start = time.perf_counter()
    torch.manual_seed(s.seed + parallel.rank())
    gen = torch.Generator().manual_seed(s.seed)  # the same on every rank: one global batch order
    device = torch.device(s.device) if s.device else next(compressed.parameters()).device
    home = next(compressed.parameters()).device
    teacher = copy.deepcopy(prepared.traced.module).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(compressed).to(device)
    if s.channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    names = [d.name for d in plan.rewritten]
    calib = [(layout(x, s), y) for x, y in take(train, s.calibration_samples, 128, gen)]
    score = _scorer(teacher, val, device)
    accuracy = {"metric": _metric_name(val), "original": score(teacher), "compressed": score(student)}
    report = {"settings": _settings(s), "interrupted": False, "ranks": parallel.world()}
    if parallel.active():
        synced = parallel.syncs_batchnorm(s.sync_batchnorm, s.batch_size)
        report["batchnorm_statistics"] = "global batch (synced)" if synced else "per rank"
    with interruptible() as stop:
        budget = TrainBudget(None, s.minutes * 60 if s.minutes else None)
        stage = Stage(teacher, student, names, train, calib, s, budget, stop, gen, device, score)
        how = RefitSettings(device, s.progress, stop, s.reconstruct, s.depthwise_rounds)
        rows, heads = reconstruct(teacher, student, names, calib, how)
        report["batchnorm_recalibrated"] = recalibrate_batchnorm(student, calib, device)
        report["stage1"] = {"layers": rows, "seconds": round(time.perf_counter() - start, 1)}
        if not s.reconstruct:
            report["stage1"]["skipped"] = (
                "the weights were fine-tuned already; a layer-wise refit would undo it"
            )
        accuracy["stage1"] = score(student)
        # only a validation score can show stage 2 did worse, so only then is the stage-1 state worth keeping
        after_stage1 = copy.deepcopy(student.state_dict()) if accuracy["stage1"] is not None else None
        stop.stage = "stage 2"
        stage2 = _stage2(stage, heads)
        report.update(stage2.report)
        if stage2.best is not None:
            student.load_state_dict(stage2.best)
        unwrap_all(student, stage2.wrapped)
        accuracy["stage2"] = score(student)
        if after_stage1 is not None and accuracy["stage2"] < accuracy["stage1"]:
            # distillation only made it worse (too high a learning rate for a near-recovered model): the user
            # gets the better model; both scores stay in the report
            student.load_state_dict(after_stage1)
            report["kept"] = "stage1"
        report["interrupted"] = stop.requested
        report["stopped_by"] = stop.signal_name
        refit = len(rows) if s.reconstruct else None
        report["progress"] = _progress(refit, len(names), report, s, stop.stopped_in)
    report["accuracy"] = accuracy
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    report["saturation"] = saturation(report.get("stage2_distill") or {})
    report["summary"] = _summary(accuracy, report)
    return student.to(home, memory_format=torch.contiguous_format).eval(), report


def _stage2(stage: Stage, heads: dict[str, list[nn.Conv2d] | None]) -> Stage2Result:
    """Phase A (block-wise features) then phase B (end-to-end KD), with a BatchNorm after each layer in
    ``heads`` that can fold one (see ``affine``); the student is trained in place, left wrapped. Phase B
    replays phase A's views with the teacher's logged outputs where it can (``replay``)."""
    s, student = stage.settings, stage.student
    steps = s.steps if s.steps or s.minutes else DEFAULT_STEPS
    parallel.agree(stage.stop, stage.budget)  # split the time left on rank 0's clock
    # a stage 1 that overran the budget leaves phase A no time, not a negative (unbounded) budget, which
    # kept a loaded one-process run training until it was killed
    left = stage.seconds_left()
    left = max(left, 0.0) if left is not None else None
    wrapped = wrap_all(student, heads, stage.calib, stage.device) if s.train_bn else []
    live = training_batches(stage.train, s, stage.gen, stage.device)
    frac = s.feature_fraction
    phase_a = TrainBudget(round(steps * frac) if steps else None, left * frac if left is not None else None)
    log = TeacherLog.for_run(stage.train, s)
    teacher = StageTeacher(stage.teacher, autocast_dtype(s.teacher_precision, stage.device))
    blocks = {}
    if frac > 0:
        params = [p for n in stage.names for p in student.get_submodule(n).parameters() if p.requires_grad]
        phase = Phase(student, params, s, phase_a, stage.stop, "stage 2a: blocks", s.progress)
        blocks = feature_phase(teacher, phase, stage.names, live, log)
    parallel.agree(stage.stop, stage.budget)
    left = stage.seconds_left()
    phase_b = TrainBudget(steps - phase_a.done if steps else None, max(left, 1.0) if left else None)
    params = [p for p in student.parameters() if p.requires_grad]
    at_b = replace(s, lr=s.lr * s.distill_lr_scale)
    phase = Phase(student, params, at_b, phase_b, stage.stop, "stage 2b: distill", s.progress)
    replayed = log.replay(
        torch.Generator().manual_seed(s.seed * 1000 + 2), stage.device
    )  # alike on all ranks
    summary, best = kd_phase(teacher, phase, stage.names, replayed or live, stage.score)
    mirror = ", averaged with their mirror images" if log.mirror else ""
    summary["teacher"] = (
        f"replayed ({log.views} views of phase A{mirror})" if replayed else f"live ({log.why_not})"
    )
    summary["teacher_precision"] = teacher.describe()
    report = {"stage2_blocks": blocks, "stage2_distill": summary, "wrapped_with_batchnorm": len(wrapped)}
    return Stage2Result(best if summary["best_score"] is not None else None, wrapped, report)


def _scorer(teacher, val, device):
    """``score(model)`` on the validation data; None (no validation, nothing to keep best by) without it."""
    if val is None:
        return lambda model: None

    def score(model):
        value = evaluate(model, teacher, val, device)
        return round(value, 5)

    return score


def _metric_name(val) -> str | None:
    if val is None:
        return None
    first = next(iter(val.batches(1) if hasattr(val, "batches") else val), None)
    has_labels = (
        first is not None and isinstance(first, (tuple, list)) and len(first) > 1 and first[1] is not None
    )
    return "top1" if has_labels else "agreement"


def _settings(s: FinetuneSettings) -> dict:
    out = asdict(s)
    out.pop("progress")
    return out


def _progress(refit: int | None, layers: int, report: dict, s: FinetuneSettings, stopped_in=None) -> str:
    """How far the fine-tune got, e.g. "stage 1: 8 of 19 layers refit; stage 2: 0 of 1000 steps" (``refit``
    None: stage 1 skipped); stopped by a signal in stage 2, that stage first: "stage 2: 2 of 1000 steps (after
    stage 1: 19 of 19 layers refit)"."""
    steps = sum((report.get(k) or {}).get("steps", 0) for k in ("stage2_blocks", "stage2_distill"))
    planned = s.steps or (None if s.minutes else DEFAULT_STEPS)
    of = f"{steps} of {planned} steps" if planned else f"{steps} steps (budget {s.minutes:g} min)"
    first = "stage 1: skipped" if refit is None else f"stage 1: {refit} of {layers} layers refit"
    if stopped_in == "stage 2":
        return f"stage 2: {of} (after {first})"
    return f"{first}; stage 2: {of}"


def saturation(distill: dict) -> dict | None:
    """How far from saturation phase B stopped: the validation score's gain between its last two checks (the
    last ``evals``-th of the phase); None without two checks. ``rising`` says a longer fine-tune would likely
    gain more (the gain is above ``RISING_GAIN``)."""
    history = distill.get("validations") or []
    if len(history) >= 2:
        last, before = history[-1], history[-2]
        share = (last["step"] - before["step"]) / max(last["step"], 1)
        gain = last["score"] - before["score"]
        return {"measure": "validation", "last_gain": round(gain, 5), "over": round(share, 3),
                "rising": gain > RISING_GAIN}  # fmt: skip
    return None


def _summary(accuracy: dict, report: dict) -> dict:
    out = {}
    if accuracy["metric"]:
        for key in ("original", "compressed", "stage1", "stage2"):
            if accuracy.get(key) is not None:
                out[f"{accuracy['metric']} {key}"] = f"{accuracy[key]:.2%}"
    if report.get("kept") == "stage1":
        out["kept"] = "stage-1 weights (stage 2 scored lower)"
    out["time"] = f"{report['wall_time_s']:.0f} s"
    sat = report.get("saturation")
    if sat:
        trend = "still rising: more minutes would likely help" if sat["rising"] else "flat"
        out["last gain"] = (
            f"{sat['last_gain'] * 100:+.2f} pt over the last {sat['over']:.0%} of phase B ({trend})"
        )
    if report["interrupted"]:
        out["INTERRUPTED"] = f"by {report['stopped_by']} at {report['progress']}, best weights so far kept"
    return out
