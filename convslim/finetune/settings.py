"""The fine-tune's settings: the recipe's knobs, each checked before any work (``FinetuneSettings.check``).

Example:
    >>> FinetuneSettings(steps=300, lr=5e-4).check()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convslim.errors import UsageError

DEFAULT_STEPS = 1000
SCHEDULES = ("cosine", "onecycle")
DISTILL_LOSSES = ("kl", "mse")
TEACHER_PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adamw", "sgd")
SYNC_BATCHNORM = ("auto", "on", "off")


@dataclass
class FinetuneSettings:
    steps: int | None = (
        None  # optimiser steps over stage 2 (both phases); None with no minutes: DEFAULT_STEPS
    )
    minutes: float | None = None  # wall-time budget for the whole fine-tune
    batch_size: int = 128
    lr: float = 3e-3  # phase A's peak learning rate (one-cycle 3e-3: +0.6-1.2 pt, issue 25); phase B's: × distill_lr_scale
    # phase B's peak is lr × this, 5e-3 by default (ResNet-20, 10 minutes, two seeds: +0.46 pt at rank 1, +0.1 at ×2)
    distill_lr_scale: float = 5 / 3
    schedule: str = "onecycle"  # warm-up, then cosine (see ``loop``); or "cosine"
    optimizer: str = "adamw"  # or "sgd"
    weight_decay: float = 0.0
    temperature: float = 4.0
    # phase B on logits: "mse" (squared logit error) or "kl" at ``temperature`` (``losses.kd_loss``); mse:
    # +0.1-0.9 pt on train10k, +0.5-2.2 pt on synthetic images (ResNet-20/32, 10 minutes; README)
    distill_loss: str = "mse"
    ce_weight: float = 1.0
    feature_weight: float = 0.0  # phase B feature matching at rewritten layers
    feature_fraction: float = 0.4  # share of stage 2 spent block-wise (phase A)
    calibration_samples: int = 1024
    augment: bool = True
    cutout: int = 0  # side of the square erased from each augmented view (0: none; DeVries & Taylor 2017)
    mixup: float = 0.0  # Beta(α, α) mixing of inputs; > 0 trains on the teacher's outputs alone (no labels)
    train_bn: bool = True
    replay_teacher: bool = True  # phase B reuses the teacher's outputs on phase A's views (``replay``)
    # the replayed outputs average the teacher's on each view and on its mirror image (flip TTA; with
    # ``augment``): +0.3 pt at ResNet-20 ×2, +0.1 pt at rank 1, at equal minutes (issue 25)
    teacher_mirror: bool = True
    # stage 2's teacher forwards: "auto" (bfloat16 where the CPU has it natively), "fp32" or "bf16" (``teacher``)
    teacher_precision: str = "auto"
    # the student's stage-2 forwards (and so their backward): "fp32", "bf16", or "auto" as for the teacher
    student_precision: str = "fp32"
    # stage 1; off when the weights were fine-tuned already (``FinetuneHook.resuming``)
    reconstruct: bool = True
    depthwise_rounds: int = 2  # stage 1: alternations of depthwise filters and heads (0: heads only)
    sync_batchnorm: str = "auto"  # under torchrun: "on", "off", or "auto" (sync under 32 samples per rank)
    evals: int = 4
    seed: int = 0
    device: str | None = None
    channels_last: bool = True  # NHWC: 2-3x faster conv training on CPU
    # glibc malloc keeps freed memory while fine-tuning (``core.heap``): stage 2 0.92-0.99x plain training's
    # images per second instead of 0.76-0.77x (ResNet-20 x2, README)
    retain_heap: bool = True
    progress: bool = True

    def check(self) -> None:
        numbers = ("minutes", "lr", "distill_lr_scale", "weight_decay", "temperature", "ce_weight")
        numbers += ("feature_weight", "mixup")
        for name in numbers + ("feature_fraction",):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{_flag(name)} must be a finite number, got {value}")
        for name in ("weight_decay", "ce_weight", "feature_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"{_flag(name)} must be ≥ 0, got {getattr(self, name)}")
        if self.calibration_samples < 1:
            raise UsageError(f"--calibration-samples must be ≥ 1, got {self.calibration_samples}")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--finetune-steps must be ≥ 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise UsageError(f"--finetune-minutes must be > 0, got {self.minutes}")
        if self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0 or self.distill_lr_scale <= 0:
            raise UsageError("--batch-size, --lr, --distill-lr-scale and --temperature must be positive")
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("distill_loss", self.distill_loss, DISTILL_LOSSES)
        _check_choice("teacher_precision", self.teacher_precision, TEACHER_PRECISIONS)
        _check_choice("student_precision", self.student_precision, TEACHER_PRECISIONS)
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.sync_batchnorm not in SYNC_BATCHNORM:
            raise UsageError(f"--sync-batchnorm must be auto, on or off, got {self.sync_batchnorm!r}")
        if self.depthwise_rounds < 0:
            raise UsageError(f"depthwise_rounds must be ≥ 0, got {self.depthwise_rounds}")
        if self.cutout < 0:
            raise UsageError(f"--cutout must be ≥ 0 (0: off), got {self.cutout}")
        if self.mixup < 0:
            raise UsageError(f"--mixup must be ≥ 0 (0: off), got {self.mixup}")
        if not 0 <= self.feature_fraction < 1:
            raise UsageError(f"feature_fraction must be in [0, 1), got {self.feature_fraction}")


def _check_choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{_flag(field_name)} must be one of {', '.join(choices)}, got {value!r}")


def _flag(field_name: str) -> str:
    """The CLI flag of a settings field (``minutes`` → ``--finetune-minutes``)."""
    renamed = {"minutes": "finetune-minutes", "steps": "finetune-steps"}
    return "--" + renamed.get(field_name, field_name.replace("_", "-"))
