"""Feeding data to fine-tuning: any data source as endless batches, augmentation, and the validation metric.

A source is an ``ArrayData`` (batched and shuffled here) or any iterable / DataLoader yielding input tensors
or ``(input, label)`` pairs (re-iterated each epoch; a one-shot iterator is read into memory first).

Metric: top-1 accuracy against labels when the data has them and the output is N×K logits, else agreement with
the teacher (top-1 agreement for N×K outputs, 1 − relative L2 error otherwise). Under torchrun each rank scores
its slice of every batch and the counts are summed, so every rank gets the same score.

Example:
    >>> batches = endless(as_source(data), 128, torch.Generator().manual_seed(0))
    >>> x, y = next(batches)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from convslim import parallel
from convslim.errors import UsageError
from convslim.inputs.data import ArrayData

Batch = tuple[torch.Tensor, "torch.Tensor | None"]


def as_source(data) -> ArrayData | list | Iterable:
    if isinstance(data, ArrayData):
        return data
    if isinstance(data, torch.Tensor):
        return ArrayData(data.float())
    if not isinstance(data, Iterable):
        raise UsageError(
            f"fine-tuning data must be a tensor, ArrayData or an iterable, got {type(data).__name__}"
        )
    if iter(data) is data:  # a one-shot iterator: keep its batches so later epochs see them again
        data = list(data)
    return data


def epoch(
    source, batch_size: int, generator: torch.Generator | None, shuffle: bool = True
) -> Iterator[Batch]:
    if isinstance(source, ArrayData):
        yield from source.batches(batch_size, shuffle, generator)
        return
    for item in source:
        yield _split(item)


def endless(source, batch_size: int, generator: torch.Generator | None) -> Iterator[Batch]:
    for _ in itertools.count():
        empty = True
        for batch in epoch(source, batch_size, generator):
            empty = False
            yield batch
        if empty:
            raise UsageError("fine-tuning data yielded no batches; give at least one sample")


def take(source, count: int, batch_size: int, generator: torch.Generator | None) -> list[Batch]:
    """Up to ``count`` samples (un-augmented) as a list of batches, for calibration."""
    out, seen = [], 0
    for x, y in epoch(source, batch_size, generator):
        out.append((x, y))
        seen += len(x)
        if seen >= count:
            break
    return out


def _split(item) -> Batch:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) >= 1 and isinstance(item[0], torch.Tensor):
        label = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        return item[0], label
    raise UsageError(
        f"fine-tuning data must yield tensors or (input, label) pairs, got {type(item).__name__}"
    )


@torch.no_grad()
def evaluate(model: nn.Module, teacher: nn.Module | None, source, device, batch_size: int = 500) -> float:
    """Top-1 against labels, or agreement with ``teacher`` (see module docstring). Model left in eval mode."""
    model.eval()
    channels_last = _channels_last(model)
    hits, total, err, ref = 0.0, 0, 0.0, 0.0
    for x, y in epoch(source, batch_size, None, shuffle=False):
        x, y = parallel.shard(x, y)
        if not len(x):
            continue
        x = x.to(device)
        if channels_last and x.dim() == 4:  # the weights' layout: a mixed-layout conv takes a slow path
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        if y is not None and out.dim() == 2:
            hits += float((out.argmax(1) == y.to(device)).sum())
        elif teacher is not None:
            want = teacher(x)
            if out.dim() == 2:
                hits += float((out.argmax(1) == want.argmax(1)).sum())
            else:
                err += float((out - want).pow(2).sum())
                ref += float(want.pow(2).sum())
        total += len(x)
    hits, total, err, ref = parallel.sum_floats(hits, total, err, ref)
    if ref > 0:
        return 1.0 - (err / ref) ** 0.5
    return hits / max(total, 1)


def _channels_last(model: nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last)
