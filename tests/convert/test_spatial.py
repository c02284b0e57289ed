"""spatial: full rank reproduces nn.Conv2d over generated configs; ranks, skips, costs, ONNX parity on FX graphs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim import compress
from convslim.convert import get_form
from convslim.convert.base import ConvSite
from convslim.convert.spatial import convert_spatial, full_rank
from convslim.errors import UsageError
from convslim.models import load_cifar_resnet


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    same = draw(st.booleans())
    stride = (1, 1) if same else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = "same" if same else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    groups = draw(st.sampled_from([1, 2, 3]))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    size = draw(st.integers(max(dh * (kh - 1), dw * (kw - 1)) + 3, 16))
    return {
        "in_channels": groups * draw(st.integers(1, 6)),
        "out_channels": groups * draw(st.integers(1, 6)),
        "kernel_size": (kh, kw),
        "stride": stride,
        "padding": padding,
        "dilation": (dh, dw),
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": mode,
        "size": size,
    }


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_full_rank_reproduces_conv(cfg):
    size = cfg.pop("size")
    conv = nn.Conv2d(**cfg).double()
    x = torch.randn(2, cfg["in_channels"], size, size + 1, dtype=torch.double)
    with torch.no_grad():
        expected, got = conv(x), convert_spatial(conv, full_rank(conv))(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max().clamp_min(1.0)


def test_factors_are_kh_by_1_then_1_by_kw_with_split_geometry():
    conv = nn.Conv2d(8, 12, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    first, second = convert_spatial(conv, 4)
    assert first.kernel_size == (3, 1) and first.out_channels == 4 and first.bias is None
    assert (first.stride, first.padding, first.dilation) == ((2, 1), (1, 0), (1, 1))
    assert second.kernel_size == (1, 5) and (second.stride, second.padding, second.dilation) == (
        (1, 1),
        (0, 2),
        (1, 2),
    )
    assert second.bias is not None


def _site(conv, in_shape, out_shape):
    return ConvSite("c", conv, [(in_shape, out_shape)])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"rank": 3}, 3),
        ({"rank": 0.5}, 24),
        ({"rank": 0.5, "rank_multiple": 16}, 32),
        ({"rank": 1000}, 48),
        ({}, 24),
    ],
)
def test_rank_options(options, expected):
    conv = nn.Conv2d(16, 64, 3, padding=1)  # full rank min(16·3, 3·64) = 48
    site = _site(conv, (16, 8, 8), (64, 8, 8))
    assert get_form("spatial").settings_from_options(site, options)["rank"] == expected


def test_energy_picks_rank_and_bad_options_are_usage_errors():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    site = _site(conv, (16, 8, 8), (16, 8, 8))
    form = get_form("spatial")
    low, high = (form.settings_from_options(site, {"energy": e})["rank"] for e in (0.5, 1.0))
    assert 1 <= low < high == full_rank(conv)
    for bad in ({"rank": 1.5}, {"rank": -2}, {"energy": 0}, {"rank": 2, "rank_multiple": 0.5}):
        with pytest.raises(UsageError):
            form.settings_from_options(site, bad)


def test_skip_reasons_and_costs():
    form = get_form("spatial")
    pointwise = nn.Conv2d(8, 8, 1)  # a 1x1 is a channel factorisation C→r→M: saves MACs only when 2r < 8
    assert "no saving" in form.supports(_site(pointwise, (8, 4, 4), (8, 4, 4)), {"rank": 4})
    assert form.supports(_site(pointwise, (8, 4, 4), (8, 4, 4)), {"rank": 3}) is None
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    site = _site(conv, (16, 16, 16), (32, 8, 8))
    assert "no saving" in form.supports(site, {"rank": 48})
    assert form.supports(site, {"rank": 4}) is None
    cost = form.cost(site, {"rank": 4})
    module = form.convert(conv, {"rank": 4})
    assert cost.params == sum(p.numel() for p in module.parameters())
    assert cost.macs == 4 * 16 * 3 * 8 * 16 + 4 * 32 * 3 * 8 * 8  # first conv keeps the input width


def test_weight_error_matches_dropped_energy():
    conv = nn.Conv2d(6, 6, 3, groups=2).double()
    form = get_form("spatial")
    first, second = form.convert(conv, {"rank": 2})
    x = torch.randn(1, 6, 9, 9, dtype=torch.double)
    assert 0 < form.weight_error(conv, {"rank": 2}) < 1
    assert form.weight_error(conv, {"rank": full_rank(conv)}) < 1e-7
    assert second(first(x)).shape == conv(x).shape


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, (3, 5), padding="same", dilation=(1, 2))
        self.head = nn.Conv2d(48, 8, 3, stride=2, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        r = torch.relu(self.b(h)) + h
        return self.head(torch.cat([r, self.c(r), h], dim=1))


@pytest.mark.parametrize("options", [{"rank": 0.25}, {"rank": 2, "rank_multiple": 8}])
def test_compress_residual_concat_graph_onnx_parity(options):
    result = compress(
        Residual().eval(), torch.randn(1, 3, 16, 16), to="spatial", measure_speed=False, **options
    )
    assert result.prepared.traced.mode == "fx"
    assert result.report.parity["onnx_vs_torch"]["passed"]
    assert len(result.plan.rewritten) >= 3


def test_half_rank_of_a_square_3x3_is_break_even_and_skipped():
    # full rank is min(C·Kh, Kw·M) = 3C; r(C·3 + M·3) = C·M·9 at r = 1.5C, so half rank saves nothing
    conv = nn.Conv2d(16, 16, 3, padding=1)
    site = _site(conv, (16, 8, 8), (16, 8, 8))
    form = get_form("spatial")
    assert "no saving" in form.supports(site, form.settings_from_options(site, {"rank": 0.5}))
    assert form.supports(site, form.settings_from_options(site, {"rank": 0.25})) is None


@pytest.mark.slow
def test_resnet20_end_to_end(resnet20_path):
    model = load_cifar_resnet(resnet20_path)
    result = compress(model, torch.randn(1, 3, 32, 32), to="spatial", measure_speed=False, rank=0.25)
    assert result.report.parity["onnx_vs_torch"]["passed"]
    assert (
        result.report.parity["onnx_vs_torch"]["max_abs_err"]
        <= 1e-4 * result.report.parity["onnx_vs_torch"]["output_scale"]
    )
    assert len(result.plan.rewritten) == 19
