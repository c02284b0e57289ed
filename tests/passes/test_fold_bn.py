"""BatchNorm folding is exact, and refuses the cases where folding would change the model."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from convslim.passes import fold_batchnorm


def _randomise_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        if bn.affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    return bn.eval()


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 12),
    out=st.integers(1, 12),
    bias=st.booleans(),
    affine=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_fold_is_exact(channels, out, bias, affine, eps):
    model = nn.Sequential(
        nn.Conv2d(channels, out, 3, padding=1, bias=bias),
        _randomise_bn(nn.BatchNorm2d(out, eps=eps, affine=affine)),
        nn.ReLU(),
    ).eval()
    gm = fx.symbolic_trace(model)
    folded, count = fold_batchnorm(gm)
    x = torch.randn(2, channels, 6, 6)
    assert count == 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_input_graph_is_not_mutated():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _randomise_bn(nn.BatchNorm2d(4))).eval()
    gm = fx.symbolic_trace(model)
    fold_batchnorm(gm)
    assert any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())


class ConvFeedsTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = _randomise_bn(nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the raw conv output is used too: folding would change it


class NoRunningStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_not_folded_when_conv_output_has_other_users():
    model = ConvFeedsTwo().eval()
    folded, count = fold_batchnorm(fx.symbolic_trace(model))
    x = torch.randn(2, 3, 8, 8)
    assert count == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_not_folded_without_running_stats():
    _, count = fold_batchnorm(fx.symbolic_trace(NoRunningStats().eval()))
    assert count == 0
