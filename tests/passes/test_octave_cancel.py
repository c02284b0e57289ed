"""Octave passes: expansion and cancellation are exact on residual graphs; coupled channels agree."""

from __future__ import annotations

import copy
import functools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim import api
from convslim.convert.octave import OctaveConv2d, convert_octave, octave_merge
from convslim.models import resnet18, resnet20
from convslim.passes.apply_plan import apply_plan
from convslim.passes.octave import cancel_octave, expand_octave
from convslim.passes.octave_channels import assign_channels_


class BnAfterAddConcat(nn.Module):
    """Concat branches, a residual add of a concat with its input, BN after the add (not foldable)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 8, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)
        self.bn = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.last = nn.Conv2d(32, 32, 3, padding=1)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.1, 0.1)
            self.bn.running_mean.uniform_(-0.1, 0.1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], 1)
        y = torch.relu(self.bn(y + x))
        return self.last(self.down(y) * 0.5 + 1).mean((2, 3))


MODELS = {
    "resnet20 (pad shortcut)": (resnet20, 32),
    "resnet18 (1x1-conv shortcut)": (resnet18, 64),
    "bn after add + concat": (BnAfterAddConcat, 16),
}


@functools.cache
def _prepared(name: str):
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    return api.prepare(model, (x,)), x


def wrapped_model(name: str, alpha: float = 0.5, coupled: bool = True):
    """Per-conv wrapper graph, example input, and each conv's setting; with ``coupled`` the region pass's channel
    assignment is applied to the graph and its sets (``low_in``/``low_out``) are in the settings."""
    prepared, x = _prepared(name)  # tracing is the slow part: share it (every pass below copies)
    plan = api.plan(prepared, to="octave", alpha=alpha, octave_region=False)
    gm = apply_plan(prepared.traced.module, plan)
    settings = {d.name: dict(d.setting) for d in plan.rewritten}
    if coupled:
        for conv, (low_in, low_out) in assign_channels_(gm, plan.rewritten).items():
            settings[conv].update(low_in=low_in, low_out=low_out)
    return gm, x, settings


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_cancellation_is_exact(name):
    gm, x, _ = wrapped_model(name)
    expanded = expand_octave(gm)
    cancelled, stats = cancel_octave(expanded)
    assert max_diff(gm, expanded, x) <= 1e-6
    assert max_diff(expanded, cancelled, x) <= 1e-6
    assert stats.cancelled > 0
    merges = sum(n.target is octave_merge for n in cancelled.graph.nodes)
    assert merges == stats.kept < sum(n.target is octave_merge for n in expanded.graph.nodes)


def test_resnet18_keeps_merges_only_where_needed():
    gm, _, _ = wrapped_model("resnet18 (1x1-conv shortcut)")
    _, stats = cancel_octave(expand_octave(gm))
    assert set(stats.reasons) <= {"global pool", "pooling", "residual add with a full-resolution operand"}
    assert "merge/split pair(s) cancelled" in stats.summary()


def test_pad_shortcut_keeps_a_merge():
    gm, _, _ = wrapped_model("resnet20 (pad shortcut)")
    _, stats = cancel_octave(expand_octave(gm))
    assert stats.reasons["pad shortcut"] >= 1


@settings(max_examples=4, deadline=None)
@given(st.sampled_from(list(MODELS)), st.sampled_from([0.25, 0.5, 0.75]), st.integers(0, 10_000))
def test_cancellation_is_exact_for_any_channel_assignment(name, alpha, seed):
    """Uncoupled, random low sets: fewer pairs cancel, but the graph must still agree exactly."""
    gm, x, _ = wrapped_model(name, alpha, coupled=False)
    rng = random.Random(seed)
    for target, module in list(gm.named_modules()):
        if isinstance(module, OctaveConv2d):
            conv = module.to_conv()
            low_in = rng.sample(range(conv.in_channels), len(module.low_in))
            low_out = rng.sample(range(conv.out_channels), len(module.low_out))
            parent, _, child = target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, convert_octave(conv, low_in, low_out))
    expanded = expand_octave(gm)
    cancelled, _ = cancel_octave(expanded)
    assert max_diff(expanded, cancelled, x) <= 1e-6


def test_coupled_channels_agree_through_residual_adds():
    _, _, by_name = wrapped_model("resnet18 (1x1-conv shortcut)")
    # layer2: the 1x1 shortcut and conv2 of block 0 write the stream block 1 reads
    stream = by_name["layer2.0.conv2"]["low_out"]
    assert by_name["layer2.0.downsample.0"]["low_out"] == stream
    assert by_name["layer2.1.conv1"]["low_in"] == stream == by_name["layer2.1.conv2"]["low_out"]


def test_concat_space_is_the_inputs_side_by_side():
    _, _, s = wrapped_model("bn after add + concat")
    assert s["down"]["low_in"] == s["a"]["low_out"] + [8 + c for c in s["b"]["low_out"]]
    assert s["stem"]["low_out"] == s["down"]["low_in"]  # coupled through the add with the concat


def test_passes_do_not_mutate_their_input():
    gm, x, _ = wrapped_model("resnet20 (pad shortcut)")
    code = gm.code
    expanded = expand_octave(gm)
    expanded_code = expanded.code
    cancel_octave(expanded)
    assert gm.code == code and expanded.code == expanded_code


def test_region_model_rebuilds_from_plan_and_state_dict():
    prepared, x = _prepared("resnet20 (pad shortcut)")
    plan = api.plan(prepared, to="octave", alpha=0.5)
    first = api.apply(prepared, plan)
    again = api.apply(prepared, copy.deepcopy(plan))  # settings now carry low_in / low_out
    again.load_state_dict(first.state_dict())
    assert max_diff(first, again, x) == 0.0
