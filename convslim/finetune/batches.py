"""Training batches: each rank's slice of the global batch, augmented, in the training layout, with what it
takes to rebuild each view (sample index, crop) so the teacher's output on it can be replayed (``replay``).

Under torchrun one generator orders the global batches alike on every rank; each rank keeps its slice and
augments it with its own generator (``parallel``).

Example:
    >>> batches = training_batches(train, settings, torch.Generator().manual_seed(0), torch.device("cpu"))
    >>> batch = next(batches)            # Batch(x, y, index, crops, teacher=None)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from convslim import parallel
from convslim.errors import UsageError
from convslim.finetune.feed import endless
from convslim.finetune.settings import FinetuneSettings
from convslim.finetune.views import Crops, apply_crops, draw_crops, mixup
from convslim.inputs.data import ArrayData


@dataclass
class Batch:
    """Inputs and labels (None: none); ``index`` (into an ``ArrayData``) and ``crops`` rebuild the view
    (``index`` None: not rebuildable); ``teacher`` is the teacher's output on ``x`` when already known."""

    x: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor | None = None
    crops: Crops | None = None
    teacher: torch.Tensor | None = None


def layout(x: torch.Tensor, s: FinetuneSettings) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last and x.dim() == 4 else x


def to_device(batch: Batch, s: FinetuneSettings, device) -> Batch:
    batch.x = layout(batch.x.to(device), s)
    batch.y = None if batch.y is None else batch.y.to(device)
    return batch


def training_batches(train, s: FinetuneSettings, gen: torch.Generator, device) -> Iterator[Batch]:
    """Endless augmented batches of this rank (see the module docstring)."""
    own = torch.Generator().manual_seed(s.seed * 1000 + 1 + parallel.rank())
    for index, x, y in _global_batches(train, s.batch_size, gen):
        if len(x) < parallel.world():  # a last batch too small to give every rank a sample
            if isinstance(train, ArrayData) and len(train) < parallel.world():
                raise UsageError(f"fine-tuning data has fewer samples than the {parallel.world()} ranks")
            continue
        x, y = parallel.shard(x, y)
        index = None if index is None else parallel.shard(index)[0]
        crops = draw_crops(x, own, s.cutout) if s.augment else None
        x = apply_crops(x, crops)
        if s.mixup > 0:  # the mixed image has no single label, and no index rebuilds it
            x, y, index = mixup(x, own, s.mixup), None, None
        yield to_device(Batch(x, y, index, crops), s, device)


def _global_batches(train, batch_size: int, gen: torch.Generator):
    """(sample indices or None, x, y) for every global batch, epoch after epoch, in ``gen``'s order."""
    if not isinstance(train, ArrayData):
        for x, y in endless(train, batch_size, gen):
            yield None, x, y
        return
    if not len(train):
        raise UsageError("fine-tuning data yielded no batches; give at least one sample")
    for _ in itertools.count():
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            yield index, train.x[index], (None if train.y is None else train.y[index])
