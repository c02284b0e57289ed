"""``GlobalBatchNorm2d``'s hand-written forward and backward against torch's BatchNorm, and the policy that decides
when stage 2 synchronises BatchNorm statistics. Alone, the cross-rank sums are the identity, so one process checks
the maths; the 2-rank equality is ``test_distributed``'s."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from convslim import parallel
from convslim.errors import UsageError
from convslim.finetune import FinetuneSettings
from convslim.parallel import _GlobalBatchNormFn
from tests.strategies import image_batches


def _grads(fn, x, weight, bias, dy):
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = fn(*leaves)
    (out * dy).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@settings(max_examples=25, deadline=None)
@given(batch=image_batches())
def test_matches_torch_batchnorm_in_training(batch):
    """Output and all three gradients equal F.batch_norm(training=True)'s to float64 rounding."""
    x, gen = batch
    n, c, h, w = x.shape
    if n * h * w < 2:
        return  # one value per channel has no variance: torch refuses it as well
    weight, bias = (
        torch.randn(c, generator=gen, dtype=torch.float64),
        torch.randn(c, generator=gen, dtype=torch.float64),
    )
    dy = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    ours = _grads(lambda *a: _GlobalBatchNormFn.apply(*a, 1e-5)[0], x, weight, bias, dy)
    ref = _grads(
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-5), x, weight, bias, dy
    )
    assert torch.allclose(ours[0], ref[0], atol=1e-10)
    for mine, theirs in zip(ours[1], ref[1], strict=True):
        assert torch.allclose(mine, theirs, atol=1e-9)


def test_returns_the_global_statistics_for_the_running_averages():
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    _, mean, var, count = _GlobalBatchNormFn.apply(x, torch.ones(3, dtype=torch.float64), None, 1e-5)
    assert torch.allclose(mean, x.mean((0, 2, 3))) and torch.allclose(var, x.var((0, 2, 3), correction=0))
    assert float(count) == 8 * 4 * 4


@pytest.mark.parametrize(
    ("mode", "batch", "world", "expected"),
    [
        ("auto", 128, 1, False),  # alone there is nothing to sync
        ("on", 128, 1, False),
        ("auto", 128, 2, False),  # 64 per rank
        ("auto", 128, 8, True),  # 16 per rank
        ("auto", 64, 2, False),  # 32 per rank: at the threshold, not under it
        ("on", 128, 2, True),
        ("off", 16, 8, False),
    ],
)
def test_sync_policy(monkeypatch, mode, batch, world, expected):
    monkeypatch.setattr(parallel, "active", lambda: world > 1)
    monkeypatch.setattr(parallel, "world", lambda: world)
    assert parallel.syncs_batchnorm(mode, batch) is expected


def test_unknown_sync_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="--sync-batchnorm must be auto, on or off"):
        FinetuneSettings(sync_batchnorm="always").check()
