"""The ways in: ``finetune(data, val)`` builds the hook ``compress(finetune=)`` calls, ``from_files`` loads the
data sets from disk (checked against the model) and builds it too.

Example:
    >>> hook = finetune(train_data, val_data, minutes=8, batch_size=128)
    >>> ft = from_files(model, (torch.randn(1, 3, 32, 32),), "train.npz", "val.npz", steps=300)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from convslim.core import Plan, Prepared
from convslim.core.samples import CALIBRATION_BATCH, MEANINGFUL_SCORE, too_few
from convslim.errors import UsageError
from convslim.finetune.feed import as_source
from convslim.finetune.recipe import run
from convslim.finetune.settings import FinetuneSettings
from convslim.inputs.data import ArrayData, Preprocess, check_finite_inputs
from convslim.inputs.sets import HeldOut, load_sets, scored_set, training_set


@dataclass(frozen=True)
class FinetuneHook:
    """What ``finetune`` returns: ``hook(prepared, compressed, plan) -> (model, report dict)``."""

    train: Any
    val: Any
    settings: FinetuneSettings

    def __call__(self, prepared: Prepared, compressed: nn.Module, plan: Plan):
        model, report = run(prepared, compressed, plan, self.train, self.val, self.settings)
        return model, _scored_on(report, self.val)

    def resuming(self) -> FinetuneHook:
        """The same fine-tune without stage 1, for weights that were fine-tuned already: a layer-wise refit
        to the original's outputs would throw away what end-to-end distillation learnt (measured: a 3-minute
        fine-tune at 63.9 % top-1, fine-tuned again for 1.5 minutes with stage 1, ended at 58.7 %)."""
        return replace(self, settings=replace(self.settings, reconstruct=False))


def _scored_on(report: dict, val) -> dict:
    """The report with what its scores were measured on (``accuracy["data"]``, ``["n"]``), and in its summary,
    on fewer than ``MEANINGFUL_SCORE`` images, a sentence instead of the numbers (report.json keeps them)."""
    accuracy, metric = report.get("accuracy") or {}, (report.get("accuracy") or {}).get("metric")
    if not isinstance(val, ArrayData) or metric is None:
        return report
    accuracy = {**accuracy, "data": val.source, "n": len(val)}
    summary = dict(report.get("summary") or {})
    if len(val) < MEANINGFUL_SCORE:
        summary = {k: v for k, v in summary.items() if not k.startswith(f"{metric} ")}
        summary = {metric: too_few(len(val), metric), **summary}
    else:
        summary = {**summary, "scored on": f"{val.source}, {len(val)} images"}
    return {**report, "accuracy": accuracy, "summary": summary}


def finetune(data, val_data=None, **settings) -> FinetuneHook:
    """The ``compress(..., finetune=)`` hook: ``hook(prepared, compressed, plan) -> (model, report dict)``."""
    config = FinetuneSettings(**settings)
    config.check()
    train, val = as_source(data), (None if val_data is None else as_source(val_data))
    for name, source in (("data", train), ("val_data", val)):
        if isinstance(source, ArrayData):  # an iterable is read only while training
            check_finite_inputs(source.x, f"{name} ({source.source})")
    return FinetuneHook(train, val, config)


@dataclass
class FinetuneData:
    """What ``from_files`` loaded: the hook for ``compress(finetune=)``, the calibration batch for
    ``compress(calibration=)``, and the data sets (``skipped`` counts unreadable images)."""

    hook: object
    calibration: torch.Tensor
    train: object
    val: object | None


@torch.no_grad()
def check_finetunable(model, example_inputs: tuple) -> None:
    """Fine-tuning distils the model's output: it must be one tensor (logits), else a one-line UsageError."""
    out = model.eval()(*example_inputs)
    if not isinstance(out, torch.Tensor):
        raise UsageError(
            f"fine-tuning distils the model's output, which must be one tensor (logits); this model returns "
            f"a {type(out).__name__}; drop --data, or wrap the model so it returns one tensor"
        )


def from_files(
    model,
    example_inputs,
    data,
    val_data=None,
    *,
    resize=None,
    mean=None,
    std=None,
    calibration_batch: int = CALIBRATION_BATCH,
    val_split: float | None = None,
    **settings,
) -> FinetuneData:
    """Load ``data`` (and ``val_data``: image folder, .npz or .pt) checked against ``model``'s inputs and
    classes, and build the fine-tuning hook; ``settings`` are ``FinetuneSettings`` fields. Without ``val_data``,
    ``val_split`` of ``data`` (stratified by label; 0: none; None: 10 %, at most 500 samples) is held out of
    training and scored on, as the CLI's ``--val-split`` does.

    Example:
        >>> ft = from_files(model, (torch.randn(1, 3, 32, 32),), "train.npz", "val.npz", steps=300)
        >>> compress(model, x, to="dwsep", rank=1, finetune=ft.hook, calibration=ft.calibration)
    """
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    check_finetunable(model, example_inputs)
    files = {"--data": data, "--val-data": val_data}
    held_out = HeldOut(val_split, settings.get("seed", 0))
    sets = load_sets(model, example_inputs, files, Preprocess(resize, mean, std), held_out)
    train, val = training_set(sets), scored_set(sets)
    batch = first_inputs(sets["--data"], settings.get("device"), calibration_batch)  # as without a split
    return FinetuneData(finetune(train, val, **settings), batch, train, val)


def from_data(model, example_inputs, train, val=None, **settings) -> FinetuneData:
    """``from_files`` for data sets already loaded (``convslim.inputs.sets.load_sets``): the model checked, the
    hook built, the first ``CALIBRATION_BATCH`` training samples as the calibration batch."""
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    check_finetunable(model, example_inputs)
    return FinetuneData(
        finetune(train, val, **settings), first_inputs(train, settings.get("device")), train, val
    )


def first_inputs(data: ArrayData, device: str | None = None, size: int = CALIBRATION_BATCH) -> torch.Tensor:
    """The first ``size`` inputs of ``data`` on ``device``: the batch ``compress(calibration=)`` takes."""
    return data.x[:size].to(device or "cpu")
