"""Applying a plan never changes the plan it is given, for every registered form; the plan as built (what the
report and the saved plan show) carries what graph-level work fixed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convslim
from convslim.convert import FORMS

OPTIONS = {
    "dwsep": {"rank": 1},
    "spatial": {"rank": 0.25},
    "grouped": {"groups": 2},
    "octave": {"alpha": 0.5},
}


class Small(nn.Module):
    """A residual block and a concat: every form's graph work (permutation folding, octave cancellation) runs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.a(x))
        y = self.b(y) + x
        z = self.c(torch.cat([F.relu(y), x], dim=1))
        return self.fc(z.mean((2, 3)))


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    return convslim.prepare(Small().eval(), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_apply_leaves_the_plan_unchanged(prepared, form):
    plan = convslim.plan(prepared, to=form, **OPTIONS.get(form, {}))
    assert plan.rewritten, f"{form}: the test model must give the form something to rewrite"
    before = copy.deepcopy(plan)
    compressed, as_built = convslim.rewrite(prepared, plan)
    convslim.apply(prepared, plan)
    assert plan == before
    assert as_built is not plan and [d.name for d in as_built.layers] == [d.name for d in plan.layers]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # the plan as built rebuilds the same model
        torch.testing.assert_close(convslim.apply(prepared, as_built)(x), compressed(x))


def test_octave_plan_as_built_records_channel_sets_and_macs(prepared):
    plan = convslim.plan(prepared, to="octave", alpha=0.5)
    _, as_built = convslim.rewrite(prepared, plan)
    for planned, built in zip(plan.rewritten, as_built.rewritten, strict=True):
        assert "low_in" not in planned.setting and "low_in" in built.setting
    assert sum(d.macs_after for d in as_built.layers) < sum(d.macs_before for d in as_built.layers)


def test_report_and_result_plan_are_the_plan_as_built():
    torch.manual_seed(0)
    plan = convslim.plan(Small().eval(), torch.randn(1, 3, 8, 8), to="octave", alpha=0.5)
    before = copy.deepcopy(plan)
    result = convslim.compress(Small().eval(), torch.randn(1, 3, 8, 8), plan=plan, verify=False)
    assert plan == before
    assert all("low_out" in d.setting for d in result.plan.rewritten)
    report_macs = {layer["name"]: layer["macs_after"] for layer in result.report.layers}
    assert report_macs == {d.name: d.macs_after for d in result.plan.layers}
