"""Replaying the teacher: phase A computes the teacher's output on every view it trains on anyway; phase B
trains on those same views again, with those outputs, instead of running the teacher a second time.

A view is rebuilt from its sample index and crop (``views``), so the log holds three small numbers and one
output row per view (ResNet-20, CIFAR-10: 51 bytes a view). On ResNet-20's ×2 plan the teacher's forward is
about a fifth of an end-to-end step (46 of 235 ms at batch 128, 2 cores). Phase B draws global batches from
the logged views in a fresh order each pass, and each rank takes its slice, so under torchrun the views are
every rank's and the result does not depend on the number of ranks. No replay (the teacher runs) when the
data is not an ``ArrayData``, with mixup (a mixed view has no index), with phase B feature matching (it needs
the teacher's features), when the output is not N×K, or past ``LIMIT_BYTES`` on any rank.

With ``teacher_mirror`` (and ``augment``) a logged output is the mean of the teacher's outputs on the view and
on its left-right mirror image, t̄ = (t(x) + t(flip(x))) / 2: a test-time-augmented teacher, as sharp as the
original on the view yet closer to what it predicts for the image. Phase A pays one more teacher forward for it;
phase B replays it free. On ResNet-20 at equal minutes: +0.3 pt at ×2 and +0.1 pt at rank 1 (two seeds each).

Example:
    >>> log = TeacherLog.for_run(train, settings)
    >>> mirrored = log.mirrored(teacher, batch)      # during phase A, before the view's own forward
    >>> log.record(batch, teacher_logits, mirrored)
    >>> batches = log.replay(generator, device) or live_batches
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from convslim import parallel
from convslim.finetune.batches import Batch, to_device
from convslim.finetune.settings import FinetuneSettings
from convslim.finetune.views import FIELDS, Crops, apply_crops
from convslim.inputs.data import ArrayData

LIMIT_BYTES = 256 * 2**20
_VIEW_BYTES = 8 + 3 + 6  # index + crop + cutout


class TeacherLog:
    """The views phase A trained on and the teacher's outputs on them (see the module docstring)."""

    def __init__(self, train: ArrayData | None, settings: FinetuneSettings):
        self.train, self.settings = train, settings
        self.records: list[tuple[torch.Tensor, Crops | None, torch.Tensor]] = []
        self.bytes = 0
        self.why_not: str | None = None if train is not None else "the data is not an in-memory array"
        self.views = 0
        self.mirror = settings.teacher_mirror and settings.augment

    @classmethod
    def for_run(cls, train, settings: FinetuneSettings) -> TeacherLog:
        log = cls(train if isinstance(train, ArrayData) else None, settings)
        if settings.mixup > 0:
            log.why_not = "mixup views cannot be rebuilt"
        elif settings.feature_weight > 0:
            log.why_not = "phase B feature matching needs the teacher's features"
        elif not settings.replay_teacher:
            log.why_not = "turned off"
        return log

    def mirrored(self, teacher, batch: Batch) -> torch.Tensor | None:
        """The teacher's output on the mirror image of ``batch``'s views when the log will average it in (see
        the module docstring), else None. Run before the view's own forward: hooks keep the last pass. An input
        that is not N×C×H×W has no mirror image: ``mirror`` turns off, so the report does not claim one."""
        if batch.x.dim() != 4:
            self.mirror = False
        if self.why_not is not None or not self.mirror:
            return None
        with torch.no_grad():
            return teacher(batch.x.flip(3))

    def record(self, batch: Batch, output: torch.Tensor, mirrored: torch.Tensor | None = None) -> None:
        if self.why_not is not None:
            return
        if batch.index is None or output.dim() != 2:
            self.why_not = "the views or the outputs cannot be logged"
            return
        if mirrored is not None:
            output = (output + mirrored) / 2
        self.bytes += output.numel() * output.element_size() + len(batch.index) * _VIEW_BYTES
        if self.bytes > LIMIT_BYTES:
            self.why_not = f"the log would pass {LIMIT_BYTES >> 20} MiB"
            return
        self.records.append((batch.index, batch.crops, output.detach().float().cpu()))

    def replay(self, generator: torch.Generator, device) -> Iterator[Batch] | None:
        """Endless batches of the logged views with their teacher outputs, or None when there is nothing to
        replay (``why_not`` says why). ``generator`` must be seeded alike on every rank."""
        if self.why_not is None and not self.records:
            self.why_not = "phase A logged no view"
        reasons = [r for r in parallel.gather_objects(self.why_not) if r is not None]
        if reasons:
            self.why_not = reasons[0]
            return None
        index, crops, outputs = _global_views(parallel.gather_objects(self.records))
        self.views = len(index)
        return self._batches(index, crops, outputs, generator, device)

    def _batches(self, index, crops, outputs, generator, device) -> Iterator[Batch]:
        size, data = self.settings.batch_size, self.train
        for _ in itertools.count():
            order = torch.randperm(len(index), generator=generator)
            for i in range(0, max(len(order) - size + 1, 1), size):  # whole global batches only
                pick = parallel.shard(order[i : i + size])[0]
                rows = index[pick]
                view = None if crops is None else crops[pick]
                x = apply_crops(data.x[rows], view)
                y = None if data.y is None else data.y[rows]
                batch = to_device(Batch(x, y, rows, view), self.settings, device)
                batch.teacher = outputs[pick].to(device)
                yield batch


def _global_views(per_rank: list[list]) -> tuple[torch.Tensor, Crops | None, torch.Tensor]:
    """Every logged view once, each global batch rebuilt from the ranks' slices ``[rank::world]``."""
    index, crops, outputs = [], [], []
    for slices in zip(*per_rank, strict=True):  # one global batch: (index, crops, outputs) of each rank
        index.append(_interleave([s[0] for s in slices]))
        outputs.append(_interleave([s[2] for s in slices]))
        if slices[0][1] is not None:
            parts = [s[1] for s in slices]
            crops.append(Crops(*(_interleave([getattr(p, k) for p in parts]) for k in FIELDS)))
    return torch.cat(index), (Crops.cat(crops) if crops else None), torch.cat(outputs)


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of ``parallel.shard``: ``out[r::world] = parts[r]``."""
    out = parts[0].new_empty((sum(len(p) for p in parts), *parts[0].shape[1:]))
    for r, part in enumerate(parts):
        out[r :: len(parts)] = part
    return out
