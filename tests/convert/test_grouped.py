"""grouped: g = 1 and full-width mix are exact; co-clustering finds planted groups; skips; ONNX parity on FX graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim import compress
from convslim.convert import get_form
from convslim.convert import grouped as grouped_module
from convslim.convert.base import ConvSite
from convslim.convert.grouped import (
    cached_co_cluster,
    co_cluster,
    convert_grouped,
    effective_weight,
    full_width,
    kept_energy,
)
from convslim.errors import UsageError
from convslim.models import load_cifar_resnet


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    k = draw(st.integers(1, 3))
    return {
        "in_channels": groups * draw(st.integers(1, 4)),
        "out_channels": groups * draw(st.integers(1, 4)),
        "kernel_size": k,
        "stride": draw(st.integers(1, 2)),
        "padding": draw(st.integers(0, 1)),
        "bias": draw(st.booleans()),
        "groups_": groups,
    }


def _run(module, conv, size=7):
    x = torch.randn(2, conv.in_channels, size, size, dtype=torch.double)
    with torch.no_grad():
        return module(x), conv(x), x


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_one_group_is_exact(cfg):
    cfg.pop("groups_")
    conv = nn.Conv2d(**cfg).double()
    got, expected, _ = _run(convert_grouped(conv, {"groups": 1}), conv)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max().clamp_min(1.0)


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_mix_at_full_width_is_exact(cfg):
    groups = cfg.pop("groups_")
    conv = nn.Conv2d(**cfg).double()
    got, expected, _ = _run(
        convert_grouped(conv, {"groups": groups, "width": full_width(conv, groups)}), conv
    )
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max().clamp_min(1.0)


@settings(max_examples=40, deadline=None)
@given(conv_configs())
def test_grouped_applies_its_effective_kernel(cfg):
    groups = cfg.pop("groups_")
    conv = nn.Conv2d(**cfg).double()
    module = convert_grouped(conv, {"groups": groups})
    got, _, x = _run(module, conv)
    want = F.conv2d(x, effective_weight(module), conv.bias, conv.stride, conv.padding)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max().clamp_min(1.0)


def test_co_clustering_recovers_planted_groups():
    rng = np.random.default_rng(0)
    groups, m, c = 4, 32, 16
    e = np.kron(np.eye(groups), np.ones((m // groups, c // groups))) + 0.01 * rng.random((m, c))
    e = e[rng.permutation(m)][:, rng.permutation(c)]
    out_l, in_l = co_cluster(e, groups)
    assert kept_energy(e, out_l, in_l) >= m * c / groups  # every planted block (energy 1 per entry) is kept
    assert all(np.bincount(out_l) == m // groups) and all(np.bincount(in_l) == c // groups)


def test_co_clustering_never_keeps_less_than_identity():
    e = np.random.default_rng(1).random((24, 12)) ** 4
    out_l, in_l = co_cluster(e, 3)
    identity = kept_energy(e, np.arange(24) // 8, np.arange(12) // 4)
    assert kept_energy(e, out_l, in_l) >= identity


def test_cached_co_clustering_matches_and_keys_on_content(monkeypatch):
    calls = []
    monkeypatch.setattr(grouped_module, "co_cluster", lambda *a: calls.append(a) or co_cluster(*a))
    e = np.random.default_rng(2).random((16, 8)) ** 4
    first = cached_co_cluster(e, 2)
    first[0][:] = -1  # callers get copies: mutating one must not poison the cache
    again = cached_co_cluster(e.copy(), 2)
    assert len(calls) == 1 and all(np.array_equal(a, b) for a, b in zip(again, co_cluster(e, 2), strict=True))
    cached_co_cluster(e, 2, fixed_in=again[1])  # a pinned side is a different problem
    cached_co_cluster(e + 1e-3, 2)
    assert len(calls) == 3


def _site(conv, shape=(8, 8)):
    return ConvSite("c", conv, [((conv.in_channels, *shape), (conv.out_channels, *shape))])


def test_skip_reasons_settings_and_cost():
    form = get_form("grouped")
    assert "not divisible" in form.supports(_site(nn.Conv2d(6, 8, 3)), {"groups": 4})
    assert "already grouped" in form.supports(_site(nn.Conv2d(8, 8, 3, groups=2)), {"groups": 2})
    assert "no saving" in form.supports(_site(nn.Conv2d(8, 8, 3)), {"groups": 1})
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    setting = form.settings_from_options(_site(conv), {"groups": 4})
    assert setting == {"groups": 4, "permute": "consistent"}
    assert form.cost(_site(conv), setting).macs == 16 * 9 * 32 // 4 * 64
    module = form.convert(conv, setting)
    assert form.cost(_site(conv), setting).params == sum(p.numel() for p in module.parameters())
    mixed = form.settings_from_options(_site(conv), {"groups": 4, "mix": True, "width": 0.5})
    assert mixed["width"] % 4 == 0 and mixed["width"] == full_width(conv, 4) // 2
    for bad in ({"groups": 0}, {"groups": 4, "permute": "shuffle"}, {"groups": 4, "mix": True, "width": 2.5}):
        with pytest.raises(UsageError):
            form.settings_from_options(_site(conv), bad)


def test_calibration_data_enters_the_setting():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    site = _site(conv)
    site.input_sample = torch.randn(4, 8, 8, 8) * torch.arange(1, 9).view(1, 8, 1, 1)
    setting = get_form("grouped").settings_from_options(site, {"groups": 2})
    assert len(setting["in_scale"]) == 8 and setting["in_scale"][7] > setting["in_scale"][0]
    assert convert_grouped(conv, setting).conv.groups == 2


class ResidualConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(32, 8, 3, stride=2, padding=1)

    def forward(self, x):
        h = F.relu(self.stem(x))
        r = self.b(F.relu(self.a(h))) + h
        return self.head(torch.cat([F.relu(self.c(r)), h], dim=1))


@pytest.mark.parametrize(
    "options", [{"groups": 4}, {"groups": 2, "permute": "gather"}, {"groups": 4, "mix": True, "width": 0.5}]
)
def test_compress_residual_concat_graph_onnx_parity(options):
    result = compress(
        ResidualConcat().eval(), torch.randn(1, 3, 16, 16), to="grouped", measure_speed=False, **options
    )
    assert result.prepared.traced.mode == "fx"
    assert result.report.parity["onnx_vs_torch"]["passed"]
    assert any(n.startswith("grouped:") for n in result.report.notes)
    assert [d.name for d in result.plan.rewritten] == ["a", "b", "c", "head"]


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"groups": 4}, {"groups": 2, "mix": True}])
def test_resnet20_end_to_end(resnet20_path, options):
    result = compress(
        load_cifar_resnet(resnet20_path),
        torch.randn(1, 3, 32, 32),
        to="grouped",
        measure_speed=False,
        **options,
    )
    parity = result.report.parity["onnx_vs_torch"]
    assert parity["passed"] and parity["max_abs_err"] <= 1e-4 * parity["output_scale"]
    assert len(result.plan.rewritten) == 18  # the 3-channel stem is not divisible by the groups
