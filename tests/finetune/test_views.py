"""Augmented views: cutout erases exactly its square, and every view (cutout included) is rebuilt for replay."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convslim.finetune.batches import training_batches
from convslim.finetune.replay import TeacherLog
from convslim.finetune.settings import FinetuneSettings
from convslim.finetune.views import PAD, Crops, apply_crops, draw_crops
from convslim.inputs.data import ArrayData


def _unshifted(n: int, ey: int, ex: int, side: int) -> Crops:
    """Crops that leave the image in place (offset PAD, no flip) and erase one square."""

    def full(v, dtype):
        return torch.full((n,), v, dtype=dtype)

    return Crops(
        full(PAD, torch.int8), full(PAD, torch.int8), full(False, torch.bool),
        full(ey, torch.int16), full(ex, torch.int16), full(side, torch.int16),
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(ey=st.integers(0, 19), ex=st.integers(0, 15), side=st.integers(1, 12), h=st.integers(16, 20))
def test_cutout_zeroes_its_clipped_square_and_nothing_else(ey, ex, side, h):
    x = torch.ones(2, 3, h, 16)
    out = apply_crops(x, _unshifted(2, min(ey, h - 1), ex, side))
    top = min(ey, h - 1) - side // 2
    rows = min(top + side, h) - max(top, 0)
    cols = min(ex - side // 2 + side, 16) - max(ex - side // 2, 0)
    assert int((out == 0).sum()) == 2 * 3 * rows * cols
    assert torch.all((out == 0) | (out == 1))


def test_cutout_keeps_the_crops_of_runs_without_it():
    x = torch.randn(8, 3, 16, 16)
    plain = draw_crops(x, torch.Generator().manual_seed(3))
    cut = draw_crops(x, torch.Generator().manual_seed(3), cutout=8)
    assert all(torch.equal(getattr(plain, k), getattr(cut, k)) for k in ("dy", "dx", "flip"))
    assert int(plain.side.max()) == 0 and int(cut.side.min()) == 8
    erased = apply_crops(x, cut) != apply_crops(x, plain)
    assert erased.any() and int(erased.sum((1, 2, 3)).max()) <= 3 * 8 * 8


def test_replayed_views_with_cutout_are_the_views_trained_on():
    data = ArrayData(torch.randn(64, 3, 16, 16), torch.randint(0, 4, (64,)))
    s = FinetuneSettings(batch_size=16, cutout=6, channels_last=False)
    log = TeacherLog.for_run(data, s)
    batches = training_batches(data, s, torch.Generator().manual_seed(0), torch.device("cpu"))
    seen = {}
    for _ in range(4):  # one epoch: each sample once
        batch = next(batches)
        log.record(batch, batch.x.flatten(1)[:, :4])
        seen.update({int(i): x for i, x in zip(batch.index, batch.x, strict=True)})
    replayed = next(log.replay(torch.Generator().manual_seed(1), torch.device("cpu")))
    assert log.why_not is None and len(replayed.x) == 16
    for i, x, t in zip(replayed.index, replayed.x, replayed.teacher, strict=True):
        assert torch.equal(x, seen[int(i)]) and torch.equal(t, x.flatten()[:4])
    assert any(bool((x == 0).any()) for x in replayed.x)
