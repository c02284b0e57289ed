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
from convslim.core.samples import CALIBRATION_BATCH
from convslim.errors import UsageError
from convslim.finetune.feed import as_source
from convslim.finetune.recipe import run
from convslim.finetune.settings import FinetuneSettings
from convslim.inputs.data import ArrayData, Preprocess, check_finite_inputs, load_sets


@dataclass(frozen=True)
class FinetuneHook:
    """What ``finetune`` returns: ``hook(prepared, compressed, plan) -> (model, report dict)``."""

    train: Any
    val: Any
    settings: FinetuneSettings

    def __call__(self, prepared: Prepared, compressed: nn.Module, plan: Plan):
        return run(prepared, compressed, plan, self.train, self.val, self.settings)

    def resuming(self) -> FinetuneHook:
        """The same fine-tune without stage 1, for weights that were fine-tuned already: a layer-wise refit
        to the original's outputs would throw away what end-to-end distillation learnt (measured: a 3-minute
        fine-tune at 63.9 % top-1, fine-tuned again for 1.5 minutes with stage 1, ended at 58.7 %)."""
        return replace(self, settings=replace(self.settings, reconstruct=False))


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
    **settings,
) -> FinetuneData:
    """Load ``data`` (and ``val_data``: image folder, .npz or .pt) checked against ``model``'s inputs and
    classes, and build the fine-tuning hook; ``settings`` are ``FinetuneSettings`` fields.

    Example:
        >>> ft = from_files(model, (torch.randn(1, 3, 32, 32),), "train.npz", "val.npz", steps=300)
        >>> compress(model, x, to="dwsep", rank=1, finetune=ft.hook, calibration=ft.calibration)
    """
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    check_finetunable(model, example_inputs)
    files = {"--data": data, "--val-data": val_data}
    sets = load_sets(model, example_inputs, files, Preprocess(resize, mean, std))
    return _finetune_data(sets["--data"], sets.get("--val-data"), calibration_batch, settings)


def from_data(model, example_inputs, train, val=None, **settings) -> FinetuneData:
    """``from_files`` for data sets already loaded (``convslim.inputs.data.load_sets``): the model checked, the
    hook built, the first ``CALIBRATION_BATCH`` training samples as the calibration batch."""
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    check_finetunable(model, example_inputs)
    return _finetune_data(train, val, CALIBRATION_BATCH, settings)


def _finetune_data(train, val, calibration_batch: int, settings: dict) -> FinetuneData:
    device = settings.get("device") or "cpu"
    hook = finetune(train, val, **settings)
    return FinetuneData(hook, train.x[:calibration_batch].to(device), train, val)
