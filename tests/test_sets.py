"""The held-out share of --data (``convslim.inputs.sets``): its default size, stratification and sources."""

from __future__ import annotations

import pytest
import torch

from convslim.inputs.data import ArrayData
from convslim.inputs.sets import HeldOut, split_held_out


@pytest.mark.parametrize("n, held", [(200, 20), (4_000, 400), (10_000, 500), (50_000, 500)])
def test_the_default_holds_out_ten_percent_and_at_most_500_images(n, held):
    y = torch.arange(n) % 10
    train, scored = split_held_out(ArrayData(torch.zeros(n, 1), y, "d.npz"), HeldOut())
    assert len(scored) == held and len(train) == n - held
    assert torch.equal(torch.bincount(scored.y, minlength=10), torch.full((10,), held // 10))
    assert f"{100 * held / n:.3g} % held out" in scored.source


def test_a_given_val_split_is_held_out_whole():
    y = torch.arange(10_000) % 10
    train, scored = split_held_out(ArrayData(torch.zeros(10_000, 1), y, "d.npz"), HeldOut(0.1))
    assert len(scored) == 1_000 and "10 % held out" in scored.source
    assert split_held_out(ArrayData(torch.zeros(10, 1), y[:10], "d.npz"), HeldOut(0))[1] is None
