"""Tracing and the full rewrite on graphs with residual adds, concat, functional ops and a conv used twice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convslim.api import apply, plan, prepare
from convslim.passes import trace_model


class Zoo(nn.Module):
    """Residual add, concat, functional ops, a functional conv with a parameter weight, a conv called twice."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 5, padding=2)
        self.fweight = nn.Parameter(torch.randn(16, 16, 3, 3) * 0.1)
        self.fbias = nn.Parameter(torch.randn(16) * 0.1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.shared(F.relu(self.shared(x)))  # conv used twice, residual add
        x = torch.cat([self.left(x), torch.sigmoid(self.right(x))], dim=1)
        x = F.conv2d(x, self.fweight, self.fbias, padding=1)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ComputedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.w * 2.0)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
            return self.conv(x)
        return -self.conv(x)


def _zoo():
    torch.manual_seed(0)
    model = Zoo()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


def test_sites_shapes_and_functional_conv_become_modules():
    prepared = prepare(_zoo(), torch.randn(1, 3, 12, 12))
    sites = {s.name: s for s in prepared.sites}
    assert prepared.traced.mode == "fx" and prepared.batchnorm_folded == 1
    assert len(sites["shared"].calls) == 2
    assert sites["right"].in_shape == (8, 12, 12)
    functional = [s for s in sites.values() if s.name.startswith("conv2d")]
    assert len(functional) == 1 and functional[0].in_shape == (16, 12, 12)


def test_full_rank_rewrite_of_whole_graph_is_exact():
    model = _zoo()
    x = torch.randn(3, 3, 12, 12)
    p = plan(model, x, to="dwsep", rank=25)
    assert all("no saving at rank 25" in d.skipped_reason for d in p.layers)
    for d in p.layers:  # a plan is data: force every conv through the full-rank rewrite
        d.form, d.setting, d.skipped_reason = "dwsep", {"rank": 25, "emission": "sum"}, None
    compressed = apply(model, p, x)
    assert sum(type(m).__name__ == "DepthwiseSeparableConv" for m in compressed.modules()) == 5
    with torch.no_grad():
        torch.testing.assert_close(compressed(x), model(x), rtol=1e-4, atol=1e-4)


def test_functional_conv_with_computed_weight_is_reported_not_ignored():
    p = plan(ComputedWeight().eval(), torch.randn(1, 3, 8, 8), to="dwsep")
    (decision,) = p.layers
    assert decision.form is None and "computed at run time" in decision.skipped_reason


def test_untraceable_model_falls_back_to_module_swap():
    model = DataDependent().eval()
    x = torch.rand(2, 3, 10, 10)
    traced = trace_model(model, (x,))
    assert traced.mode == "module-swap" and "fell back" in traced.notes[0]
    prepared = prepare(model, x)
    assert prepared.sites[0].in_shape == (3, 10, 10)
    compressed = apply(prepared, plan(prepared, to="dwsep", rank=9))
    with torch.no_grad():
        torch.testing.assert_close(compressed(x), model(x), rtol=1e-4, atol=1e-4)
