"""dwsep: full rank reproduces nn.Conv2d over generated configs; ranks, energy, skip reasons, weight error."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim.convert import get_form
from convslim.convert.base import ConvSite, rank_for_energy
from convslim.convert.dwsep import DepthwiseSeparableConv, channel_spectra, convert_dwsep
from convslim.errors import UsageError


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = draw(st.integers(1, 3))
    same = draw(st.booleans())
    stride = 1 if same else draw(st.integers(1, 3))
    padding = "same" if same else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    size = draw(st.integers(dilation * (max(kh, kw) - 1) + 3, 16))
    return {
        "in_channels": draw(st.integers(1, 24)),
        "out_channels": draw(st.integers(1, 24)),
        "kernel_size": (kh, kw),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "bias": draw(st.booleans()),
        "padding_mode": mode,
        "size": size,
        "emission": draw(st.sampled_from(["sum", "concat"])),
    }


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_full_rank_reproduces_conv(cfg):
    size, emission = cfg.pop("size"), cfg.pop("emission")
    conv = nn.Conv2d(**cfg).double()
    full = cfg["kernel_size"][0] * cfg["kernel_size"][1]
    x = torch.randn(2, cfg["in_channels"], size, size + 1, dtype=torch.double)
    with torch.no_grad():
        expected = conv(x)
        got = convert_dwsep(conv, full, emission)(x)
    assert got.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-12)
    assert (got - expected).abs().max() / scale <= 1e-4


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([(3, 3), (3, 1), (1, 5), (2, 2)]),
    st.integers(1, 2),
    st.booleans(),
)
def test_grouped_conv_full_rank_reproduces_conv(groups, in_per_group, out_per_group, kernel, stride, bias):
    """Per group: depthwise filters + a grouped 1x1 (groups g); exact at T = min(M/g, Kh·Kw), and the
    replacement has exactly the parameters ``cost`` counts."""
    conv = nn.Conv2d(
        groups * in_per_group,
        groups * out_per_group,
        kernel,
        stride,
        padding=(kernel[0] // 2, 0),
        groups=groups,
        bias=bias,
    ).double()
    full = min(out_per_group, kernel[0] * kernel[1])
    x = torch.randn(2, conv.in_channels, 9, 8, dtype=torch.double)
    sep = convert_dwsep(conv, full)
    with torch.no_grad():
        expected = conv(x)
        got = sep(x)
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max().clamp_min(1)
    assert all(pw.groups == groups for pw in sep.pointwise)
    site = ConvSite("layer", conv, [(tuple(x.shape[1:]), tuple(expected.shape[1:]))])
    assert get_form("dwsep").cost(site, {"rank": full}).params == sum(p.numel() for p in sep.parameters())


def test_float32_full_rank_within_1e4_relative():
    conv = nn.Conv2d(24, 20, (5, 3), stride=2, padding=(2, 1), dilation=1)
    x = torch.randn(3, 24, 17, 15)
    with torch.no_grad():
        rel = (convert_dwsep(conv, 15)(x) - conv(x)).norm() / conv(x).norm()
    assert rel < 1e-4


def test_rank_one_emits_plain_depthwise_and_pointwise():
    sep = convert_dwsep(nn.Conv2d(16, 32, 3, padding=1), 1)
    assert isinstance(sep, DepthwiseSeparableConv) and sep.rank == 1
    dw, pw = sep.depthwise[0], sep.pointwise[0]
    assert dw.groups == 16 and dw.out_channels == 16 and pw.kernel_size == (1, 1) and pw.out_channels == 32


def test_rank_above_full_is_clamped():
    conv = nn.Conv2d(4, 2, 3)
    assert convert_dwsep(conv, 9).rank == 2  # min(M, Kh·Kw)


def test_input_conv_is_untouched():
    conv = nn.Conv2d(8, 8, 3)
    before = conv.weight.detach().clone()
    convert_dwsep(conv, 1)
    assert torch.equal(conv.weight, before)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_weight_error_matches_effective_kernel(rank):
    conv = nn.Conv2d(6, 10, 3, bias=False).double()
    sep = convert_dwsep(conv, rank, "sum")
    effective = sum(
        pw.weight[:, :, 0, 0, None, None] * dw.weight[:, 0][None]  # W[m,c] = Σ_t P_t[m,c] D_t[c]
        for dw, pw in zip(sep.depthwise, sep.pointwise, strict=True)
    )
    actual = float((conv.weight - effective).norm() / conv.weight.norm())
    assert get_form("dwsep").weight_error(conv, {"rank": rank}) == pytest.approx(actual, rel=1e-6)


def test_energy_picks_smallest_rank_reaching_it():
    conv = nn.Conv2d(8, 16, 3)
    form = get_form("dwsep")
    for energy in (0.3, 0.8, 0.99, 1.0):
        rank = rank_for_energy(channel_spectra(conv.weight, 1)[1], energy)
        assert 1 - form.weight_error(conv, {"rank": rank}) ** 2 >= energy - 1e-9
        if rank > 1:
            assert 1 - form.weight_error(conv, {"rank": rank - 1}) ** 2 < energy


def _site(conv, hw=8):
    with torch.no_grad():
        out = conv(torch.zeros(1, conv.in_channels, hw, hw))
    return ConvSite("layer", conv, [((conv.in_channels, hw, hw), tuple(out.shape[1:]))])


@pytest.mark.parametrize(
    ("conv", "setting", "reason"),
    [
        (nn.Conv2d(8, 8, 1), {"rank": 1}, "1x1 kernel"),
        (nn.Conv2d(8, 8, 3, groups=8), {"rank": 1}, "already depthwise"),
        (nn.Conv2d(8, 8, 3, groups=2), {"rank": 1, "emission": "concat"}, "grouped conv (groups=2)"),
        (nn.ConvTranspose2d(8, 8, 3), {"rank": 1}, "transposed"),
        (nn.Conv2d(8, 4, 3), {"rank": 3}, "no saving at rank 3"),
    ],
)
def test_skip_reasons(conv, setting, reason):
    assert reason in get_form("dwsep").supports(_site(conv), setting)


def test_cost_follows_formula():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    cost = get_form("dwsep").cost(_site(conv, 10), {"rank": 2})
    assert cost.macs == 16 * 2 * (9 + 32) * 100  # C·T·(K² + M)·H'W'
    assert cost.params == 16 * 2 * (9 + 32) + 32


@pytest.mark.parametrize("options", [{"rank": 0}, {"rank": 1.5}, {"energy": 1.5}, {"energy": 0}])
def test_bad_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        get_form("dwsep").settings_from_options(_site(nn.Conv2d(4, 4, 3)), options)
