"""The BatchNorm-statistics loss (``convslim.inputs.bn_probe``): its closed-form backward equals autograd's."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from torch import nn

from convslim.inputs.bn_probe import BatchNormProbe, channel_moments
from tests.strategies import image_batches


@settings(max_examples=25, deadline=None)
@given(batch=image_batches(max_batch=4))
def test_channel_moments_match_var_mean_and_its_gradient(batch):
    a, gen = batch
    c = a.shape[1]
    g_mean, g_var = (
        torch.randn(c, generator=gen, dtype=torch.float64),
        torch.randn(c, generator=gen, dtype=torch.float64),
    )
    ours = a.clone().requires_grad_(True)
    mean, var = channel_moments(ours)
    (mean @ g_mean + var @ g_var).backward()
    ref = a.clone().requires_grad_(True)
    ref_var, ref_mean = torch.var_mean(ref, dim=(0, 2, 3), unbiased=False)
    (ref_mean @ g_mean + ref_var @ g_var).backward()
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)
    torch.testing.assert_close(ours.grad, ref.grad)


def test_channel_moments_pass_gradcheck():
    a = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(channel_moments, (a,))


def test_probe_loss_is_zero_on_the_statistics_it_remembers():
    x = torch.randn(64, 3, 6, 6) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 4
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    model[0].running_mean.copy_(x.mean(dim=(0, 2, 3)))
    model[0].running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    probe = BatchNormProbe(model)
    try:
        model(x)
        assert float(probe.take()) < 1e-4
        model[0].running_var.mul_(4)
        model(x)
        assert float(probe.take()) > 1.0
    finally:
        probe.close()
