"""Permutation folding: the folded model equals the same grouping with explicit gathers, on generated graphs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from convslim.api import apply, plan, prepare
from convslim.convert.grouped import GroupedConv, convert_grouped


class Net(nn.Module):
    """stem → chain of convs (ReLU between) → optional residual add / concat → 1x1 head."""

    def __init__(self, widths: list[int], residual: bool, concat: bool, pool: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        self.chain = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:] + widths[:1], strict=True)
        )
        self.residual, self.concat, self.pool = residual, concat, pool
        self.head = nn.Conv2d(widths[0] * (2 if concat else 1), 8, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        h = x
        for i, conv in enumerate(self.chain):
            h = conv(h)
            h = F.max_pool2d(F.relu(h), 3, 1, 1) if self.pool and i == 0 else F.relu(h)
        if self.residual:
            h = h + x
        if self.concat:
            h = torch.cat([h, x], dim=1)
        return self.head(h)


def gathered_reference(prepared, compressed, the_plan):
    """The original with each rewritten conv replaced by the *same* grouping, gathers kept inside the layer."""
    reference = copy.deepcopy(prepared.traced.module)
    modules = dict(compressed.named_modules())
    for decision in the_plan.rewritten:
        in_perm, out_perm = modules[decision.name].orders
        conv = reference.get_submodule(decision.name)
        new = convert_grouped(conv, decision.setting, fixed_in=in_perm, fixed_out=out_perm)
        parent, _, child = decision.name.rpartition(".")
        setattr(reference.get_submodule(parent) if parent else reference, child, new)
    return reference


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.sampled_from([4, 8, 12]), min_size=1, max_size=3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([2, 4]),
    st.sampled_from(["consistent", "gather"]),
    st.booleans(),
)
def test_folded_model_equals_gathered_model(widths, residual, concat, pool, groups, policy, mix):
    model = Net(widths, residual, concat, pool).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.double)
    prepared = prepare(model, (x[:1],))
    options = {"groups": groups, "permute": policy, **({"mix": True, "width": 0.5} if mix else {})}
    the_plan = plan(prepared, to="grouped", **options)
    notes: list[str] = []
    compressed = apply(prepared, the_plan, notes=notes)
    reference = gathered_reference(prepared, compressed, the_plan)
    with torch.no_grad():
        got, want = compressed(x), reference(x)
    assert (got - want).abs().max() <= 1e-10 * want.abs().max().clamp_min(1.0)
    assert any(n.startswith("grouped:") for n in notes)


def _fold_note(notes: list[str]) -> str:
    return next(n for n in notes if "permutations folded" in n)


def _gathers(module) -> int:
    return sum(
        (m.in_index is not None) + (m.out_index is not None)
        for m in module.modules()
        if isinstance(m, GroupedConv)
    )


def test_chain_without_coupling_has_no_gathers_left():
    model = Net([8, 8, 8], residual=False, concat=False, pool=True).eval()
    prepared = prepare(model, (torch.randn(1, 3, 8, 8),))
    notes: list[str] = []
    compressed = apply(prepared, plan(prepared, to="grouped", groups=4), notes=notes)
    assert isinstance(compressed, fx.GraphModule)
    assert _gathers(compressed) == 0
    assert _fold_note(notes).endswith(
        "1 identity order (model output)"
    )  # only the head's output order is pinned


@pytest.mark.parametrize(
    ("policy", "word"), [("consistent", "identity order (residual add)"), ("gather", "gather (residual add)")]
)
def test_residual_coupling_is_reported(policy, word):
    model = Net([8, 8], residual=True, concat=False, pool=False).eval()
    prepared = prepare(model, (torch.randn(1, 3, 8, 8),))
    notes: list[str] = []
    compressed = apply(prepared, plan(prepared, to="grouped", groups=2, permute=policy), notes=notes)
    assert word in _fold_note(notes)
    assert (_gathers(compressed) > 0) == (policy == "gather")
