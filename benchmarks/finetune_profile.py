"""Where stage 2's time goes (``bench_finetune.py --profile``): one step broken into its parts, images per second
of phase A, phase B and the whole stage, and plain supervised training of the *original* model on the same
machine with the same batch, layout and augmentation, timed in alternating blocks in one run.

Parts of a step (medians over the instrumented steps): feeding (batch, augmentation, layout), the teacher's
forward, the student's forward, loss + backward, the optimiser; validation is the time of one pass over the
validation images. Phases are timed with the library's own loops (``distill.feature_phase`` / ``kd_phase``),
phase B with the teacher replayed (its default after phase A) and live. "stage 2" weighs the two phases as the
recipe's time budget does (``feature_fraction`` of the time in phase A). The teacher runs as stage 2 runs it
(``teacher_precision``; ``--set teacher_precision=fp32`` times it in float32).

``--variants`` times the student's step four ways in alternating blocks: as the library runs it (eager),
under ``torch.compile`` (inductor, its compile time apart), with its 1x1 convs run as matmuls over
channels-last tensors, and with its training BatchNorms folded into the heads (a step without them, as phase B
would run unnormalised), each against plain training of the original; the library keeps whichever measures
fastest at no cost in accuracy (today eager: README "Where the minutes go").
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from convslim.api import prepare, rewrite
from convslim.core.heap import retained_heap
from convslim.finetune.affine import TrainNorm, is_plain_1x1, unwrap_all, wrap_all
from convslim.finetune.batches import layout, training_batches
from convslim.finetune.distill import feature_phase, kd_phase
from convslim.finetune.feed import evaluate, take
from convslim.finetune.loop import Phase, make_optimizer
from convslim.finetune.losses import kd_loss
from convslim.finetune.reconstruct import RefitSettings, reconstruct
from convslim.finetune.replay import TeacherLog
from convslim.finetune.settings import FinetuneSettings
from convslim.finetune.stopping import StopFlag, TrainBudget
from convslim.finetune.teacher import StageTeacher, autocast_dtype


def _models(model, plan, train, s: FinetuneSettings):
    """(teacher, student wrapped for training, rewritten layer names) as ``recipe.run`` builds them (the teacher
    as stage 2 runs it: ``teacher_precision``)."""
    prepared = prepare(model, (train.x[:1],))
    compressed, plan = rewrite(prepared, plan)
    cl = torch.channels_last
    teacher = copy.deepcopy(prepared.traced.module).eval().to(memory_format=cl)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(compressed).to(memory_format=cl)
    names = [d.name for d in plan.rewritten]
    gen = torch.Generator().manual_seed(0)
    calib = [(layout(x, s), y) for x, y in take(train, 512, 128, gen)]
    _, heads = reconstruct(teacher, student, names, calib, RefitSettings(refit=False))
    wrap_all(student, heads, calib, "cpu")
    return StageTeacher(teacher, autocast_dtype(s.teacher_precision, torch.device("cpu"))), student, names


def step_inputs(model, plan, train, s: FinetuneSettings, steps: int) -> tuple:
    """(student, original in training mode, ``steps`` batches, the teacher's outputs on them): what a timed
    training step of either model needs, the teacher's outputs precomputed as phase B replays them."""
    teacher, student, _ = _models(model, plan, train, s)
    batches = training_batches(train, s, torch.Generator().manual_seed(0), "cpu")
    data = [next(batches) for _ in range(steps)]
    with torch.no_grad():
        targets = [teacher(b.x) for b in data]
    original = copy.deepcopy(model).to(memory_format=torch.channels_last).train()
    return student, original, data, targets


def _parts(teacher, student, batches, s: FinetuneSettings, steps: int) -> dict:
    """Median milliseconds of each part of an end-to-end step with the teacher run live."""
    optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], s)
    times: dict[str, list[float]] = {k: [] for k in ("feed", "teacher", "student forward", "loss+backward")}
    times["optimizer"] = []
    for i in range(steps + 3):
        t = [time.perf_counter()]
        batch = next(batches)
        t.append(time.perf_counter())
        target = teacher(batch.x)
        t.append(time.perf_counter())
        student.train()
        out = student(batch.x)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        kd_loss(out, target, batch.y, s.temperature, s.ce_weight, s.distill_loss).backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        if i >= 3:  # warm-up steps left out
            for key, a, b in zip(times, t, t[1:], strict=False):
                times[key].append((b - a) * 1e3)
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def _plain_block(model, optimizer, batches, steps: int) -> float:
    """Seconds for ``steps`` steps of supervised training of the original (its BatchNorms training)."""
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch.x), batch.y).backward()
        optimizer.step()
    return time.perf_counter() - start


def _phase_block(run, student, s: FinetuneSettings, steps: int) -> float:
    params = [p for p in student.parameters() if p.requires_grad]
    phase = Phase(student, params, s, TrainBudget(steps, None), StopFlag(), "profile")
    start = time.perf_counter()
    run(phase)
    return time.perf_counter() - start


def profile(model, plan, train, val, s: FinetuneSettings, rounds: int = 3, steps: int = 12) -> dict:
    """The measurements of the module docstring, as one dict (milliseconds per step, images per second),
    with glibc malloc's thresholds as the fine-tune sets them (``retain_heap``), plain training too."""
    with retained_heap(s.retain_heap) as heap:
        return {**_profile(model, plan, train, val, s, rounds, steps), "heap": heap}


def _profile(model, plan, train, val, s: FinetuneSettings, rounds: int, steps: int) -> dict:
    teacher, student, names = _models(model, plan, train, s)
    live = training_batches(train, s, torch.Generator().manual_seed(0), "cpu")
    out = {"parts_ms": _parts(teacher, student, live, s, steps)}
    original = copy.deepcopy(model).to(memory_format=torch.channels_last)
    plain_opt = make_optimizer(list(original.parameters()), s)
    log = TeacherLog.for_run(train, s)
    runs = {
        "phase A": lambda ph: feature_phase(teacher, ph, names, live, log),
        "phase B (teacher live)": lambda ph: kd_phase(teacher, ph, names, live),
        "phase B (teacher replayed)": lambda ph: kd_phase(teacher, ph, names, replay),
    }
    seconds: dict[str, list[float]] = {k: [] for k in [*runs, "plain training of the original"]}
    for _ in range(rounds):  # alternating blocks, so a drift of the machine hits every row alike
        for key, run in runs.items():
            if key == "phase B (teacher replayed)":
                replay = log.replay(torch.Generator().manual_seed(1), "cpu")
            seconds[key].append(_phase_block(run, student, s, steps))
        seconds["plain training of the original"].append(_plain_block(original, plain_opt, live, steps))
    rate = {k: round(steps * s.batch_size / statistics.median(v), 1) for k, v in seconds.items()}
    frac = s.feature_fraction
    rate["stage 2"] = round(frac * rate["phase A"] + (1 - frac) * rate["phase B (teacher replayed)"], 1)
    rate["stage 2 / plain training"] = round(rate["stage 2"] / rate["plain training of the original"], 3)
    out["images_per_s"] = rate
    start = time.perf_counter()
    evaluate(student, teacher.module, val, "cpu")
    out["validation_s"] = round(time.perf_counter() - start, 2)
    return out


class PointwiseAsMatmul(torch.nn.Module):
    """A plain 1x1 conv run as ``F.linear`` over the channels of a channels-last tensor (the same weights; the
    output keeps the channels-last layout). A variant of the student step, not a library component."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        weight = c.weight.view(c.out_channels, c.in_channels)
        return F.linear(x.permute(0, 2, 3, 1), weight, c.bias).permute(0, 3, 1, 2)


def _with_matmul_pointwise(student: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(student)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if is_plain_1x1(child):
                setattr(parent, name, PointwiseAsMatmul(child))
    return twin


def _without_training_norms(student: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(student)
    unwrap_all(twin, [name for name, m in twin.named_modules() if isinstance(m, TrainNorm)])
    return twin


def variants(model, plan, train, s: FinetuneSettings, rounds: int = 8, steps: int = 4) -> dict:
    """The student's training step (forward, KD loss, backward, optimiser; teacher outputs precomputed) as the
    library runs it (eager), under ``torch.compile`` (inductor), with its 1x1 convs run as matmuls and with its
    training BatchNorms folded, against plain training of the original: medians of alternating blocks of
    ``steps`` steps, milliseconds per step."""
    student, original, data, targets = step_inputs(model, plan, train, s, steps)
    nets = {
        "eager": student,
        "torch.compile": torch.compile(student),
        "1x1 as matmul": _with_matmul_pointwise(student),
        "training BatchNorms folded": _without_training_norms(student),
    }
    optimizers = {
        k: make_optimizer([p for p in m.parameters() if p.requires_grad], s) for k, m in nets.items()
    }

    def step(key: str, i: int) -> None:
        nets[key].train()
        out = nets[key](data[i].x)
        optimizers[key].zero_grad(set_to_none=True)
        kd_loss(out, targets[i], data[i].y, s.temperature, s.ce_weight, s.distill_loss).backward()
        optimizers[key].step()

    start = time.perf_counter()
    step("torch.compile", 0)  # compiles
    result: dict = {"compile_s": round(time.perf_counter() - start, 1)}
    plain_opt = make_optimizer(list(original.parameters()), s)
    ms: dict[str, list[float]] = {k: [] for k in [*nets, "plain training of the original"]}
    for _ in range(rounds):
        for key in nets:
            start = time.perf_counter()
            for i in range(steps):
                step(key, i)
            ms[key].append((time.perf_counter() - start) / steps * 1e3)
        block = iter(data * 2)
        plain_s = _plain_block(original, plain_opt, block, steps)
        ms["plain training of the original"].append(plain_s / steps * 1e3)
    result["ms_per_step"] = {k: round(statistics.median(v), 1) for k, v in ms.items()}
    return result
