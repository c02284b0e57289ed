"""Images made from a model's BatchNorm statistics (``convslim.inputs.synthetic``): the statistics get matched,
the images have the model's input shape, the run is seeded, the time cap holds, the model is left alone, and
what cannot work is refused in one line."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from convslim.errors import UsageError
from convslim.inputs.bn_probe import BatchNormProbe
from convslim.inputs.synthetic import (
    DEFAULT_COUNT,
    SynthesisSettings,
    parse_synthetic,
    synthesize,
)

EXAMPLE = torch.randn(1, 3, 12, 12)


class BNNet(nn.Module):
    """Two conv+BN+ReLU blocks and a 4-class head, with BatchNorm statistics far from what noise gives."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Images unlike noise: smooth, with per-channel offsets (what the BatchNorms were 'trained' on)."""
    low = torch.randn(n, 3, 3, 3, generator=torch.Generator().manual_seed(seed)) * 1.5
    low += torch.tensor([0.8, -0.5, 0.2]).view(1, 3, 1, 1)
    return nn.functional.interpolate(low, size=(12, 12), mode="bilinear", align_corners=False)


@pytest.fixture
def net() -> BNNet:
    """BNNet whose BatchNorm running statistics are those of ``smooth_images`` (as training leaves them)."""
    torch.manual_seed(0)
    model = BNNet()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.momentum = None  # a cumulative average over the batches
    with torch.no_grad():
        model.head.weight.mul_(10)
        model.train()(smooth_images(256, seed=0))
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


def quick(**fields) -> SynthesisSettings:
    return SynthesisSettings(**{"count": 16, "steps": 40, "batch_size": 8, "progress": False, **fields})


def bn_loss(model: nn.Module, x: torch.Tensor) -> float:
    probe = BatchNormProbe(model)
    try:
        with torch.no_grad():
            model(x)
        return float(probe.take())
    finally:
        probe.close()


def test_batchnorm_statistics_get_matched(net):
    made = synthesize(net, EXAMPLE, quick())
    assert made.x.shape == (16, 3, 12, 12) and made.y is None
    assert torch.isfinite(made.x).all()
    record = made.record
    assert record.images == record.asked == 16
    assert record.bn_loss_end < 0.3 * record.bn_loss_start
    noise = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    assert bn_loss(net, made.x[:8]) < 0.3 * bn_loss(net, noise)  # the images themselves, not the record


def test_model_is_left_as_it_was(net):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    synthesize(net, EXAMPLE, quick(count=4, steps=3))
    assert net.training
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net._forward_pre_hooks and not any(m._forward_pre_hooks for m in net.modules())


def test_seeded(net):
    a, b = (synthesize(net, EXAMPLE, quick(steps=5)).x for _ in range(2))
    other = synthesize(net, EXAMPLE, quick(steps=5, seed=1)).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)


def test_a_batch_is_the_same_whoever_makes_it(net):
    """Batch k depends on (seed, k) only: what lets ranks split the batches (the torchrun test checks 2 ranks)."""
    whole = synthesize(net, EXAMPLE, quick(count=16, steps=5)).x
    first = synthesize(net, EXAMPLE, quick(count=8, steps=5)).x
    torch.testing.assert_close(whole[:8], first)


def test_output_term_pulls_images_towards_their_classes(net):
    """With ``output_weight`` image i is pushed towards class i mod 4: more images land in their class, and the
    teacher is more confident on them."""
    targets = torch.arange(16) % 4
    with torch.no_grad():
        plain = net(synthesize(net, EXAMPLE, quick()).x).softmax(1)
        pulled = net(synthesize(net, EXAMPLE, quick(output_weight=1.0)).x).softmax(1)
    assert (pulled.argmax(1) == targets).sum() > (plain.argmax(1) == targets).sum()
    assert pulled.max(1).values.mean() > plain.max(1).values.mean()


def test_jitter_flip_and_prior_still_match_the_statistics(net):
    made = synthesize(net, EXAMPLE, quick(jitter=1, flip=True, prior_weight=1e-3))
    assert made.record.bn_loss_end < 0.3 * made.record.bn_loss_start


def test_coarse_to_fine_images_match_the_statistics_at_full_size(net):
    """Half the steps at 6×6 (fed upsampled), then the upsampled images refined at 12×12."""
    made = synthesize(net, EXAMPLE, quick(coarse=0.5))
    assert made.x.shape == (16, 3, 12, 12)
    assert made.record.bn_loss_end < 0.3 * made.record.bn_loss_start
    assert not torch.equal(made.x, synthesize(net, EXAMPLE, quick(coarse=0.0)).x)
    assert synthesize(net, EXAMPLE, quick(coarse=0.9, steps=2)).x.shape == (16, 3, 12, 12)  # last step fine


@pytest.mark.parametrize("coarse", [-0.1, 1.0])
def test_a_coarse_share_outside_0_1_is_refused(net, coarse):
    with pytest.raises(UsageError, match="coarse"):
        synthesize(net, EXAMPLE, quick(coarse=coarse))


def test_images_stay_in_the_pixel_box_and_still_match_the_statistics(net):
    """The smooth images' pixels lie in about [-4, 4]; a box of a real image's range keeps every pixel in it."""
    box = ((-3.0, -2.5, -2.0), (3.0, 2.5, 2.0))
    made = synthesize(net, EXAMPLE, quick(box=box))
    low, high = (torch.tensor(side).view(1, 3, 1, 1) for side in box)
    assert ((made.x >= low) & (made.x <= high)).all()
    assert (made.x == high).any() or (made.x == low).any()  # the box did bind: unbounded images go past it
    assert made.record.bn_loss_end < 0.3 * made.record.bn_loss_start
    assert made.record.settings["box"] == box


@pytest.mark.parametrize("box", [((1.0,), (0.0,)), ((0.0, 0.0), (1.0, 1.0)), ((0.0,), (1.0, -1.0, 1.0))])
def test_a_bad_pixel_box_is_refused(net, box):
    with pytest.raises(UsageError, match="pixel box"):
        synthesize(net, EXAMPLE, quick(box=box))


def test_time_cap_stops_between_batches(net):
    """A fake clock, 10 s a call: after the first batch another one would end past the 15 s cap."""
    ticks = itertools.count(0, 10)
    made = synthesize(net, EXAMPLE, quick(count=24, steps=2, seconds=15), clock=lambda: float(next(ticks)))
    assert len(made.x) == made.record.images == 8 and made.record.asked == 24
    assert "of 24 asked" in made.record.describe()


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("synthetic", DEFAULT_COUNT),
        ("synthetic:5", 5),
        ("train.npz", None),
        ("synthetic_set/", None),
        (None, None),
    ],
)
def test_parse(text, count):
    assert parse_synthetic(text) == count


@pytest.mark.parametrize("text", ["synthetic:0", "synthetic:-3", "synthetic:many", "synthetic:"])
def test_parse_refuses_a_bad_count(text):
    with pytest.raises(UsageError, match=r"synthetic:N|N must be ≥ 1"):
        parse_synthetic(text)


def test_a_model_without_batchnorm_needs_data():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    plain(EXAMPLE)
    with pytest.raises(UsageError, match="has none.*give --data"):
        synthesize(plain, EXAMPLE, quick())


def test_a_model_that_does_not_take_images_is_refused():
    mlp = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).eval()
    with pytest.raises(UsageError, match="N×C×H×W"):
        synthesize(mlp, torch.randn(1, 6), quick())


def test_zero_images_is_refused(net):
    with pytest.raises(UsageError, match="N ≥ 1"):
        synthesize(net, EXAMPLE, quick(count=0))
