"""Stage 1's depthwise-filter solve: given the true heads it recovers the filters exactly, in every geometry
and emission dwsep builds; alternating it with the heads lowers a layer's error below the heads alone."""

from __future__ import annotations

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim.convert.dwsep import convert_dwsep
from convslim.finetune.affine import linear_heads
from convslim.finetune.depthwise_fit import depthwise_feeds, fit_depthwise
from convslim.finetune.reconstruct import RefitSettings, _refit, fit_heads


def _error(module, x, y) -> float:
    with torch.no_grad():
        return float((module(x) - y).norm() / y.norm())


@settings(max_examples=12, deadline=None)
@given(
    channels=st.sampled_from([4, 6]),
    out_channels=st.sampled_from([4, 6, 12]),
    rank=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    emission=st.sampled_from(["sum", "concat"]),
    bias=st.booleans(),
)
def test_filters_solved_exactly_given_the_true_heads(
    channels, out_channels, rank, stride, dilation, emission, bias
):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=bias)
    truth = convert_dwsep(conv.double(), rank, emission)
    x = torch.randn(6, channels, 9, 9, dtype=torch.float64)
    y = truth(x).detach()
    student = copy.deepcopy(truth)
    with torch.no_grad():
        for dw in student.depthwise:
            dw.weight.copy_(torch.randn_like(dw.weight))
    heads = linear_heads(student, x[:2])
    feeds = depthwise_feeds(student, heads, x[:2])
    assert feeds is not None and sum(len(f) for f in feeds) == len(student.depthwise)
    assert _error(student, x, y) > 0.1
    fit_depthwise(heads, feeds, [(x[:3], y[:3]), (x[3:], y[3:])], ridge=0.0)
    assert _error(student, x, y) < 1e-8


def test_alternating_beats_heads_alone_on_a_real_target():
    """The inputs are smooth in space (as images and activations are): the weight SVD ignores that, the
    data-aware filters use it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.relu(nn.functional.avg_pool2d(torch.randn(64, 8, 14, 14), 3, 1))
    y = conv(x).detach()
    pairs = [(x[:32], y[:32]), (x[32:], y[32:])]
    errors = {}
    for rounds in (0, 2):
        sep = convert_dwsep(conv, 1)
        heads = linear_heads(sep, x[:2])
        feeds = depthwise_feeds(sep, heads, x[:2]) if rounds else None
        row = _refit(sep, heads, feeds, pairs, rounds)
        errors[rounds] = row["error_after"]
        assert row["method"].startswith("least-squares")
    assert errors[2] < 0.9 * errors[0]


def test_structures_it_does_not_take():
    """A depthwise conv that does not read the layer's input, or a padding mode other than zeros: no feeds."""
    x = torch.randn(2, 4, 8, 8)
    chained = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
                            nn.Conv2d(4, 4, 1))  # fmt: skip
    assert depthwise_feeds(chained, [chained[2]], x) is None
    reflect = convert_dwsep(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), 1)
    assert depthwise_feeds(reflect, linear_heads(reflect, x), x) is None
    assert RefitSettings().depthwise_rounds == 2
    sep = convert_dwsep(nn.Conv2d(4, 8, 3, padding=1), 1)
    fit_heads(sep, linear_heads(sep, x), [(x, sep(x).detach())])
