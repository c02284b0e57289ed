"""Every zoo architecture through plan → apply → export → ONNX parity, for every form.

One export per model: a mixed plan gives each conv the first form that takes it (rotating), so every form meets
every wiring (residual adds, concat, SE gates, channel shuffle, grouped and transposed convs, functional convs,
the trace fallback). Each form's own uniform plan is also applied and run in PyTorch.
"""

from __future__ import annotations

import math

import pytest
import torch
from zoo_helpers import mixed_plan

import convslim
from convslim.api import apply, prepare
from convslim.convert import FORMS
from convslim.models.zoo import ZOO, build

MODELS = [name for name in ZOO if name != "fixed_size"]


@pytest.mark.parametrize("name", MODELS)
def test_every_form_exports_with_parity(name):
    model, shape = build(name)
    x = torch.randn(shape)
    prepared = prepare(model, x)
    plan = mixed_plan(prepared.sites)
    result = convslim.compress(model, x, plan=plan, measure_speed=False)
    report = result.report
    parity = report.parity["onnx_vs_torch"]
    assert report.passed, (name, parity, report.notes)
    assert parity["floor_max_abs_err"] == report.parity["original_onnx_vs_torch"]["max_abs_err"]
    assert {s.name for s in prepared.sites} <= {layer["name"] for layer in report.layers}
    for layer in report.layers:  # every conv: rewritten, or a reason in words
        assert layer["form"] or layer["skipped_reason"], layer
    assert plan.rewritten, f"{name}: no form took any conv"


@pytest.mark.parametrize("name", MODELS)
def test_each_uniform_plan_applies_and_runs(name):
    model, shape = build(name)
    x = torch.randn(shape)
    prepared = prepare(model, x)
    with torch.no_grad():
        ref = model(x)
    for form in FORMS:
        plan = convslim.plan(prepared, to=form)
        out = apply(prepared, plan)(x)
        for got, want in zip(_tensors(out), _tensors(ref), strict=True):
            assert got.shape == want.shape and torch.isfinite(got).all(), (name, form)
        if not plan.rewritten:
            assert all(d.skipped_reason for d in plan.layers), (name, form)


def test_trace_fallback_model_passes_parity():
    """ENet does not trace (torch.zeros(*sizes)); module swapping keeps its BatchNorms, parity still holds."""
    model, shape = build("enet")
    result = convslim.compress(model, torch.randn(shape), to="dwsep", rank=1, measure_speed=False)
    assert result.report.trace_mode == "module-swap"
    assert any("could not trace" in n for n in result.report.notes)
    assert result.report.passed, result.report.parity
    assert result.report.parity["compressed_vs_original"]["rel_l2"] > 0  # it was rewritten


def test_grouped_3x3_gets_depthwise_separable_per_group():
    model, shape = build("resnext")
    plan = convslim.plan(model, torch.randn(shape), to="dwsep", rank=1)
    grouped = [d for d in plan.layers if d.weight_shape and d.weight_shape[1] * 4 == d.in_shape[0]]
    assert grouped and all(d.form == "dwsep" for d in grouped)
    assert all(d.macs_after < d.macs_before for d in grouped)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def test_zoo_covers_the_families():
    families = {"residual", "bottleneck", "preact", "se", "densenet", "inception", "dilated", "transposed"}
    families |= {
        "octconv",
        "enet",
        "mobilenet_v2",
        "mobilenet_v3",
        "efficientnet",
        "shufflenet_v2",
        "resnext",
    }
    assert families | {"multihead"} <= set(ZOO)
    assert math.prod(ZOO["enet"][1]) <= 3 * 32 * 32  # tiny inputs keep the zoo fast
