r"""The training loop both stage-2 phases share: one optimiser step per batch under a step/time budget, all
ranks stopping together on rank 0's clock; the end-to-end phase also validates and keeps the best weights.

Learning rate over the phase's budget progress p ∈ [0, 1] (``settings.schedule``):

    cosine:    lr(p) = lr · ½ (1 + cos πp)
    onecycle:  lr(p) = lr · (0.1 + 0.9 p/w)  for p < w = 0.15,  then  lr · ½ (1 + cos π (p − w)/(1 − w))

Example:
    >>> phase = Phase(student, params, settings, TrainBudget(500, None), StopFlag(), "stage 2b: distill")
    >>> summary = train(phase, batches, lambda forward, batch: loss_of(forward(batch.x), batch))
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from convslim import parallel
from convslim.finetune.batches import Batch
from convslim.finetune.settings import FinetuneSettings
from convslim.finetune.stopping import StopFlag, TrainBudget
from convslim.finetune.teacher import autocast_dtype, full_outputs, precision_name

WARMUP = 0.15  # onecycle: share of the phase spent warming up

LossOf = Callable[[Callable[[torch.Tensor], torch.Tensor], Batch], torch.Tensor]


@dataclass
class Phase:
    """One training phase: ``params`` of ``student`` train on ``budget``; ``desc`` names its progress bar."""

    student: nn.Module
    params: list[torch.Tensor]
    settings: FinetuneSettings
    budget: TrainBudget
    stop: StopFlag
    desc: str
    progress: bool = False


@dataclass
class _Tally:
    """Images seen and losses, for the progress bar and the summary."""

    start: float = field(default_factory=time.perf_counter)
    seen: int = 0
    losses: list[float] = field(default_factory=list)

    def add(self, images: int, loss: float) -> dict:
        self.seen += images * parallel.world()
        self.losses.append(loss)
        return {"loss": f"{loss:.4f}", "img/s": f"{self.seen / (time.perf_counter() - self.start):.0f}"}

    def summary(self, steps: int) -> dict:
        losses = self.losses
        if parallel.active():  # each rank saw its slice: report the mean loss over ranks
            total = parallel.all_sum(torch.tensor(losses, dtype=torch.float64))
            losses = (total / parallel.world()).tolist()
        elapsed = time.perf_counter() - self.start
        return {
            "steps": steps,
            "seconds": round(elapsed, 1),
            "images_per_s": round(self.seen / max(elapsed, 1e-9), 1),
            "loss_first": _mean(losses[:10]),
            "loss_last": _mean(losses[-10:]),
        }


def make_optimizer(params, settings: FinetuneSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay
        )
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def learning_rate(settings: FinetuneSettings, progress: float) -> float:
    """The schedule of the module docstring at budget progress ``progress``."""
    p = min(max(progress, 0.0), 1.0)
    if settings.schedule == "onecycle":
        if p < WARMUP:
            return settings.lr * (0.1 + 0.9 * p / WARMUP)
        p = (p - WARMUP) / (1 - WARMUP)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * p))


def train(phase: Phase, batches: Iterator[Batch], loss_of: LossOf, after_step=None) -> dict:
    """Optimise until the budget is spent or a stop is requested; ``after_step(loss)`` (optional) runs after
    each step and returns extra progress-bar fields. Returns the phase's summary."""
    optimizer = make_optimizer(phase.params, phase.settings)
    tally = _Tally()
    show = phase.progress and parallel.is_main()
    bar = tqdm(desc=phase.desc, total=phase.budget.steps, disable=not show, leave=False)
    with _data_parallel(phase) as parallel_forward:
        forward = student_forward(parallel_forward, phase)
        while True:
            parallel.agree(phase.stop, phase.budget)  # all ranks stop together, on rank 0's clock
            if not phase.budget.left() or phase.stop.requested:
                break
            batch = next(batches)
            loss = _step(phase, optimizer, forward, batch, loss_of)
            postfix = tally.add(len(batch.x), loss)
            postfix.update(after_step(loss) if after_step is not None else {})
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    bar.close()
    return {**tally.summary(phase.budget.done), "student_precision": precision_name(student_dtype(phase))}


def _step(phase: Phase, optimizer, forward, batch: Batch, loss_of: LossOf) -> float:
    phase.student.train()
    loss = loss_of(forward, batch)
    if parallel.active():  # every trainable parameter gets a gradient (DDP waits for each)
        loss = loss + 0.0 * sum(p.sum() for p in phase.params)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(phase.settings, phase.budget.progress())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    phase.budget.done += 1
    return float(loss.detach())


class BestKeeper:
    """Validates at ``settings.evals`` evenly spaced points of the budget and keeps the best weights; of tied
    scores the later, which has trained longer (on the 500 held-out images of a CLI run ties are common, and
    scored on all 5,000 val5k images the later checkpoints of phase B were the better: README "Nor does the
    checkpoint the CLI keeps matter")."""

    def __init__(self, phase: Phase, validate: Callable[[nn.Module], float | None] | None):
        self.phase, self.validate = phase, validate
        self.every = 1.0 / max(phase.settings.evals, 1)
        self.next_eval = self.every
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_state: dict | None = None

    def __call__(self, loss: float) -> dict:
        budget = self.phase.budget
        if self.validate is None or (budget.progress() < self.next_eval and budget.left()):
            return {}
        self.next_eval += self.every
        score = self.validate(self.phase.student)
        if score is None:  # no validation data: nothing to keep best by
            self.validate = None
            return {}
        self.history.append({"step": budget.done, "score": score, "loss": loss})
        if self.best is None or score >= self.best:
            self.best, self.best_state = score, copy.deepcopy(self.phase.student.state_dict())
        return {"val": f"{score:.4f}"}


def student_dtype(phase: Phase) -> torch.dtype | None:
    """The dtype the phase's student forwards autocast to (None: float32, as the model is), for
    ``settings.student_precision`` on the student's device; the phase's summary names it."""
    return autocast_dtype(phase.settings.student_precision, next(phase.student.parameters()).device)


def student_forward(forward: Callable, phase: Phase) -> Callable:
    """``forward`` run as ``settings.student_precision`` asks: as it is, or under bfloat16 autocast (where the
    CPU computes it natively, for "auto") with float32 outputs, so that losses and optimiser stay in float32."""
    dtype = student_dtype(phase)
    if dtype is None:
        return forward
    device = next(phase.student.parameters()).device

    def run(x: torch.Tensor):
        with torch.autocast(device.type, dtype=dtype):
            return full_outputs(forward(x))

    return run


@contextlib.contextmanager
def _data_parallel(phase: Phase):
    """Under torchrun: the student in DistributedDataParallel over ``phase.params`` only (the rest frozen
    meanwhile), its BatchNorms synchronised where ``parallel.syncs_batchnorm`` says; alone: the student
    itself. Hooks and state stay on the student."""
    student, params = phase.student, phase.params
    if not parallel.active():
        yield student
        return
    chosen = {id(p) for p in params}
    frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    synced = parallel.syncs_batchnorm(phase.settings.sync_batchnorm, phase.settings.batch_size)
    swapped = parallel.sync_batchnorms(student) if synced else []
    try:
        yield parallel.data_parallel(student, next(iter(params)).device)
    finally:
        parallel.plain_batchnorms(swapped)
        for p in frozen:
            p.requires_grad_(True)


def _mean(values):
    return round(sum(values) / len(values), 5) if values else None
