"""Functional convs in every call form become modules (same outputs) or are skipped with a reason; never a crash."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convslim.api import prepare
from convslim.models.zoo import build

W = torch.randn(8, 4, 3, 3)
B = torch.randn(8)
CALLS = {
    "positional": lambda m, x: F.conv2d(x, m.w, m.b, 1, 1, 1, 1),
    "keyword weight": lambda m, x: F.conv2d(x, weight=m.w, padding=1),
    "all keywords": lambda m, x: F.conv2d(
        input=x, weight=m.w, bias=m.b, stride=2, padding=(1, 0), dilation=1
    ),
    "bias None": lambda m, x: F.conv2d(x, m.w, None, stride=(2, 1), dilation=(1, 2)),
    "same padding": lambda m, x: F.conv2d(x, m.w, m.b, 1, "same"),
    "torch.conv2d": lambda m, x: torch.conv2d(x, m.w, m.b, padding=1),
    "grouped": lambda m, x: F.conv2d(x, m.g, None, 1, 1, 1, 2),
}


class Call(nn.Module):
    def __init__(self, call):
        super().__init__()
        self.w, self.b = nn.Parameter(W.clone()), nn.Parameter(B.clone())
        self.g = nn.Parameter(torch.randn(8, 2, 3, 3))
        self.call = call

    def forward(self, x):
        return self.call(self, x)


@pytest.mark.parametrize("form", list(CALLS))
def test_call_form_becomes_a_module_with_the_same_output(form):
    model = Call(CALLS[form])
    x = torch.randn(2, 4, 9, 9)
    prepared = prepare(model, x)
    assert not prepared.traced.unconvertible, prepared.traced.unconvertible
    assert len(prepared.sites) == 1 and isinstance(prepared.sites[0].conv, nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(prepared.traced.module(x), model(x))


def test_computed_weight_and_runtime_setting_are_skipped_with_reasons():
    model = Call(lambda m, x: F.conv2d(x, m.w * 2) + F.conv2d(x, m.w, stride=x.size(-1) // 9))
    prepared = prepare(model, torch.randn(1, 4, 9, 9))
    reasons = sorted(prepared.traced.unconvertible.values())
    assert prepared.traced.mode == "fx" and not prepared.sites
    assert "stride is computed at run time" in reasons[0]
    assert "weight is computed at run time" in reasons[1]


def test_octconv_traces_every_form_and_lists_the_computed_one():
    model, shape = build("octconv")
    prepared = prepare(model, torch.randn(shape))
    assert prepared.traced.mode == "fx"
    assert len(prepared.traced.unconvertible) == 1
    assert "weight is computed at run time" in next(iter(prepared.traced.unconvertible.values()))
    assert len(prepared.sites) == 6  # stem + hh, lh, ll, hl + the output conv
