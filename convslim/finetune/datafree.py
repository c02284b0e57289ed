"""Fine-tuning without data: the hook trained on images synthesised from the original model's BatchNorm statistics
(``convslim.inputs.synthetic``), optionally mixed with a handful of the user's unlabeled images.

The images stand in for data everywhere data goes: ``compress(calibration=)`` (the planner's damage probes, the
parity checks) takes the first of them, stage 1 refits on them, stage 2 distils on them from the teacher's outputs
alone (they have no labels). Making them counts towards the fine-tune's ``minutes``: they get at most
``GENERATION_SHARE`` of it, and the fine-tune what is left. The report's ``finetune.data`` and the summary say
that no data was used, how many images were made and how long that took.

Example:
    >>> ft = from_synthetic(model, (torch.randn(1, 3, 32, 32),), SynthesisSettings(count=1024), minutes=10)
    >>> compress(model, x, plan=plan, finetune=ft.hook, calibration=ft.calibration)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from convslim.core import Plan, Prepared
from convslim.core.samples import CALIBRATION_BATCH
from convslim.finetune.hook import FinetuneData, FinetuneHook, check_finetunable, finetune
from convslim.inputs.data import ArrayData
from convslim.inputs.synthetic import SynthesisSettings, SyntheticData, synthesize

GENERATION_SHARE = 0.3  # of --finetune-minutes, at most, for making the images
MIN_FINETUNE_MINUTES = 1 / 60  # what the fine-tune keeps when making the images took the whole budget
# the recipe's defaults that differ on synthetic images (a setting given wins): mixup widens a few hundred made
# images where real data has thousands (ResNet-20 x2, 10 minutes: 83.0 against 79.8 %; with cutout 16 as well
# 82.9 %; README "Without data"); phase B at --lr's peak: 5/3 of it, the default on real data, gave
# 85.00 / 77.04 % against 85.52 / 76.70 % (x2 / rank 1, RESULTS 79)
SYNTHETIC_RECIPE = {"mixup": 1.0, "distill_lr_scale": 1.0}


@dataclass(frozen=True)
class DataFreeHook:
    """``FinetuneHook`` on synthetic images; adds ``data`` (what was trained on) to the fine-tune's report and
    puts it first in its summary."""

    inner: FinetuneHook
    data: dict

    def __call__(self, prepared: Prepared, compressed: nn.Module, plan: Plan):
        model, report = self.inner(prepared, compressed, plan)
        report["data"] = dict(self.data)
        report["summary"] = {"data": self.data["summary"], **report.get("summary", {})}
        return model, report

    def resuming(self) -> DataFreeHook:
        return replace(self, inner=self.inner.resuming())


def generation_settings(count: int, minutes: float | None = None, **fields) -> SynthesisSettings:
    """``SynthesisSettings`` for ``count`` images whose time cap is ``GENERATION_SHARE`` of ``minutes``."""
    seconds = minutes * 60 * GENERATION_SHARE if minutes else None
    return SynthesisSettings(count=count, seconds=seconds, **fields)


def from_synthetic(
    model: nn.Module,
    example_inputs,
    synthetic: SyntheticData | SynthesisSettings | None = None,
    real: ArrayData | None = None,
    val_data=None,
    **settings,
) -> FinetuneData:
    """The fine-tuning hook and calibration batch on images made from ``model`` (``synthetic``: made already,
    or the settings to make them with; None: the defaults, capped by ``minutes``), with ``real`` unlabeled
    images added when given; ``settings`` are ``FinetuneSettings`` fields, with ``SYNTHETIC_RECIPE`` for those
    not given. The fine-tune's ``minutes`` are what is left after making the images.

    Example:
        >>> ft = from_synthetic(model, x, generation_settings(1024, minutes=10), minutes=10)
        >>> ft.hook.data["summary"]
        'no data: 1024 synthetic images from the model's BatchNorm statistics, made in 95 s'
    """
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    check_finetunable(model, example_inputs)
    settings = {**SYNTHETIC_RECIPE, **settings}
    if not isinstance(synthetic, SyntheticData):
        made_with = synthetic or generation_settings(SynthesisSettings().count, settings.get("minutes"))
        synthetic = synthesize(model, example_inputs, made_with)
    train = mixed(synthetic, real)
    record = synthetic.record
    facts = {"kind": "synthetic", "images": record.images, "real_images": 0 if real is None else len(real)}
    described = record.describe() + (
        f" and {len(real)} unlabeled images of {real.source}" if real is not None else ""
    )
    facts.update(generation_s=record.seconds, synthesis=record.to_dict(), described=described)
    facts["summary"] = f"none — {described}"
    if settings.get("minutes"):
        left = max(settings["minutes"] - record.seconds / 60, MIN_FINETUNE_MINUTES)
        facts.update(budget_minutes=settings["minutes"], finetune_minutes=round(left, 3))
        settings = {**settings, "minutes": left}
    hook = DataFreeHook(finetune(train, val_data, **settings), facts)
    device = settings.get("device") or "cpu"
    return FinetuneData(hook, train.x[:CALIBRATION_BATCH].to(device), train, hook.inner.val)


def mixed(synthetic: SyntheticData, real: ArrayData | None) -> ArrayData:
    """The training pool: the real images first (so the calibration batch, and what the parity checks compare
    on, starts with them), then the synthetic ones; no labels (the real ones' are dropped, as they are few)."""
    if real is None:
        return synthetic
    x = torch.cat([real.x.to(synthetic.x.dtype), synthetic.x])
    return ArrayData(x, None, f"{real.source} + {synthetic.source}")
