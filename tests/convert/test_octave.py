"""octave: the wrapper's math, exactness at alpha = 0, cost, channel choice, skip reasons, ONNX parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim import api
from convslim.convert import get_form
from convslim.convert.base import ConvSite
from convslim.convert.octave import OctaveConv2d, convert_octave, n_low
from convslim.errors import UsageError
from convslim.models import load_cifar_resnet, resnet20


def reference_octave(conv: nn.Conv2d, x: torch.Tensor, low_in: list[int], low_out: list[int]) -> torch.Tensor:
    """The issue's formula written out directly, as an independent check of the module."""
    high_in = [c for c in range(conv.in_channels) if c not in low_in]
    high_out = [c for c in range(conv.out_channels) if c not in low_out]
    w, b = conv.weight, conv.bias
    kw = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    xh, xl = x[:, high_in], F.avg_pool2d(x[:, low_in], 2)
    yh = F.conv2d(xh, w[high_out][:, high_in], None if b is None else b[high_out], **kw)
    yh = yh + F.interpolate(F.conv2d(xl, w[high_out][:, low_in], **kw), scale_factor=2.0, mode="nearest")
    yl = F.conv2d(F.avg_pool2d(xh, 2), w[low_out][:, high_in], None if b is None else b[low_out], **kw)
    yl = yl + F.conv2d(xl, w[low_out][:, low_in], **kw)
    out = torch.empty(x.shape[0], conv.out_channels, *yh.shape[2:])
    out[:, high_out], out[:, low_out] = yh, F.interpolate(yl, scale_factor=2.0, mode="nearest")
    return out


@st.composite
def octave_cases(draw):
    c_in, c_out = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    size = draw(st.sampled_from([8, 12, 16]))
    low_in = sorted(draw(st.sets(st.integers(0, c_in - 1), min_size=1, max_size=c_in - 1)))
    low_out = sorted(draw(st.sets(st.integers(0, c_out - 1), min_size=1, max_size=c_out - 1)))
    bias = draw(st.booleans())
    return c_in, c_out, k, stride, size, low_in, low_out, bias


@settings(max_examples=30, deadline=None)
@given(octave_cases())
def test_wrapper_matches_formula_and_alpha_zero_is_exact(case):
    c_in, c_out, k, stride, size, low_in, low_out, bias = case
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)
    x = torch.randn(2, c_in, size, size)
    with torch.no_grad():
        octave = convert_octave(conv, low_in, low_out)
        torch.testing.assert_close(
            octave(x), reference_octave(conv, x, low_in, low_out), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(convert_octave(conv, [], [])(x), conv(x), atol=1e-6, rtol=1e-6)
        assert torch.equal(octave.to_conv().weight, conv.weight)  # the four kernels tile the trained weight


def test_convert_is_pure():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    before = conv.weight.clone()
    convert_octave(conv, [1, 2], [3])
    assert torch.equal(conv.weight, before)


def _plan_apply(model: nn.Module, x: torch.Tensor, **options):
    """(prepared, the plan as built, the compressed model, notes)."""
    prepared = api.prepare(model, (x,))
    plan = api.plan(prepared, to="octave", **options)
    notes: list[str] = []
    compressed, as_built = api.rewrite(prepared, plan, notes=notes)
    return prepared, as_built, compressed, notes


@pytest.mark.parametrize("region", [True, False])
def test_alpha_zero_model_is_the_original(region):
    model = resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    _, plan, compressed, _ = _plan_apply(model, x, alpha=0.0, octave_region=region)
    assert len(plan.rewritten) == 19
    with torch.no_grad():
        torch.testing.assert_close(compressed(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, -0.1, 1.5, "half", True])
def test_bad_alpha_is_a_usage_error(alpha):
    site = ConvSite("c", nn.Conv2d(8, 8, 3, padding=1), [((8, 8, 8), (8, 8, 8))])
    with pytest.raises(UsageError, match="alpha"):
        get_form("octave").settings_from_options(site, {"alpha": alpha})


def test_bad_region_option_is_a_usage_error():
    site = ConvSite("c", nn.Conv2d(8, 8, 3, padding=1), [((8, 8, 8), (8, 8, 8))])
    with pytest.raises(UsageError, match="octave_region"):
        get_form("octave").settings_from_options(site, {"octave_region": "no"})


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75])
def test_cost_is_one_minus_three_quarters_alpha_two_minus_alpha(alpha):
    form = get_form("octave")
    site = ConvSite("c", nn.Conv2d(16, 16, 3, padding=1, bias=False), [((16, 16, 16), (16, 16, 16))])
    setting = form.settings_from_options(site, {"alpha": alpha})
    dense = 16 * 16 * 9 * 16 * 16
    assert form.cost(site, setting).macs == pytest.approx(dense * (1 - 0.75 * alpha * (2 - alpha)))
    assert form.cost(site, setting).params == 16 * 16 * 9


def test_n_low_keeps_small_layers_and_one_high_channel():
    assert n_low(3, 0.5) == 0  # the RGB input stays at full resolution
    assert n_low(16, 0.5) == 8
    assert n_low(8, 0.99) == 7


@pytest.mark.parametrize(
    ("conv", "calls", "match"),
    [
        (nn.Conv2d(8, 8, 3, padding=1), [((8, 7, 7), (8, 7, 7))], "odd spatial size"),
        (nn.Conv2d(8, 8, 3, stride=2, padding=1), [((8, 12, 12), (8, 6, 6))], None),
        (nn.Conv2d(8, 8, 3, stride=2, padding=1), [((8, 10, 10), (8, 5, 5))], "odd spatial size"),
        (nn.Conv2d(8, 8, 3, padding=0), [((8, 8, 8), (8, 6, 6))], "half-resolution branch gives"),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), [((8, 8, 8), (8, 8, 8))], "grouped"),
        (nn.ConvTranspose2d(8, 8, 2, stride=2), [((8, 8, 8), (8, 16, 16))], "transposed"),
    ],
)
def test_skip_reasons(conv, calls, match):
    site = ConvSite("c", conv, calls)
    form = get_form("octave")
    reason = form.supports(site, form.settings_from_options(site, {}))
    assert reason is None if match is None else match in reason


def test_odd_feature_map_layers_are_skipped_in_a_plan():
    model = resnet20().eval()
    x = torch.randn(1, 3, 28, 28)  # stage 3 runs at 7x7
    plan = api.plan(model, (x,), to="octave")
    skipped = {d.name: d.skipped_reason for d in plan.layers if d.form is None}
    assert any("odd spatial size" in r for r in skipped.values())
    assert "layer1.0.conv1" not in skipped


def test_calibration_picks_the_smoothest_channels():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    data = torch.randn(16, 8, 8, 8)
    smooth = [1, 4, 6, 7]
    data[:, smooth] = F.interpolate(F.avg_pool2d(data[:, smooth], 2), scale_factor=2.0)  # loses nothing
    site = ConvSite("c", conv, [((8, 8, 8), (8, 8, 8))], input_sample=data)
    form = get_form("octave")
    setting = form.settings_from_options(site, {"alpha": 0.5})
    assert setting["loss_source"] == "calibration"
    assert form.low_channels(conv, setting)[0] == smooth


def test_first_conv_keeps_the_image_at_full_resolution_and_plan_records_sets():
    model = resnet20().eval()
    _, plan, _, notes = _plan_apply(model, torch.randn(1, 3, 32, 32), alpha=0.5)
    first = plan.rewritten[0]
    assert first.name == "conv1" and first.setting["low_in"] == [] and len(first.setting["low_out"]) == 8
    assert any("merge/split pair(s) cancelled" in n for n in notes)
    assert plan.to_json()  # settings stay JSON-serialisable


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.a(x) + x)
        return self.fc(self.down(x).mean((2, 3)))


@pytest.mark.parametrize("region", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_onnx_parity_small(region):
    result = api.compress(
        TinyNet().eval(),
        torch.randn(1, 3, 16, 16),
        to="octave",
        alpha=0.5,
        measure_speed=False,
        octave_region=region,
    )
    assert result.report.parity["onnx_vs_torch"]["passed"]
    ops = result.report.parity["onnx_ops"]
    assert ops.get("AveragePool") and ops.get("Resize")


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["resnet20_path", "resnet32_path"])
def test_cifar_checkpoints_convert_with_onnx_parity(fixture, request):
    model = load_cifar_resnet(request.getfixturevalue(fixture))
    result = api.compress(model, torch.randn(1, 3, 32, 32), to="octave", alpha=0.5, measure_speed=False)
    parity = result.report.parity["onnx_vs_torch"]
    assert parity["passed"] and parity["rtol"] <= 1e-4
    assert any("cancelled" in n for n in result.report.notes)


def test_module_swap_fallback_uses_the_wrapper():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent control flow defeats symbolic tracing
                return x
            return self.conv(x)

    model = Untraceable().eval()
    x = torch.randn(1, 8, 8, 8)
    prepared, plan, compressed, notes = _plan_apply(model, x, alpha=0.5)
    assert prepared.traced.mode == "module-swap"
    assert isinstance(compressed.conv, OctaveConv2d)
    assert any("wrapper form" in n for n in notes)
