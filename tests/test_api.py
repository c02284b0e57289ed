"""Python API: the input model is never touched; plan → apply → save → reload round-trips exactly."""

from __future__ import annotations

import copy

import pytest
import torch

import convslim
from convslim.core import Plan
from convslim.errors import PlanError
from convslim.models import resnet20
from tests.cli_models import Small


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = resnet20()
    for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.running_mean, -0.2, 0.2)
        torch.nn.init.uniform_(bn.running_var, 0.5, 1.5)
    return m.train()  # a model left in training mode must come back in training mode


def test_input_model_is_never_mutated(model):
    before = copy.deepcopy(model.state_dict())
    convslim.compress(model, torch.randn(1, 3, 32, 32), rank=1, verify=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(type(m).__name__ != "DepthwiseSeparableConv" for m in model.modules())


def test_plan_inspect_then_apply(model):
    x = torch.randn(2, 3, 32, 32)
    plan = convslim.plan(model, x, to="dwsep", rank=2, exclude=["conv1"])
    decisions = {d.name: d for d in plan.layers}
    assert decisions["conv1"].form is None and decisions["conv1"].skipped_reason == "excluded by --exclude"
    assert decisions["layer1.0.conv1"].setting["rank"] == 2
    compressed = convslim.apply(model, plan, x)
    assert type(compressed.get_submodule("layer1.0.conv1")).__name__ == "DepthwiseSeparableConv"
    assert type(compressed.get_submodule("conv1")).__name__ == "Conv2d"


def test_plan_json_round_trip_applies_identically(model):
    x = torch.randn(2, 3, 32, 32)
    plan = convslim.plan(model, x, to="dwsep", energy=0.6)
    again = Plan.from_json(plan.to_json())
    a, b = convslim.apply(model, plan, x), convslim.apply(model, again, x)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_plan_for_another_model_is_refused(model):
    x = torch.randn(1, 3, 32, 32)
    plan = convslim.plan(model, x, rank=1)
    plan.layers[3].name = "layer9.conv"
    with pytest.raises(PlanError, match="layer9.conv"):
        convslim.apply(model, plan, x)


def test_not_a_plan():
    with pytest.raises(PlanError, match="not a convslim plan"):
        Plan.from_json('{"hello": 1}')


def test_outputs_reload_without_pickle(model, tmp_path):
    x = torch.randn(1, 3, 32, 32)
    result = convslim.compress(model, x, rank=1, out_dir=tmp_path / "out", measure_speed=False)
    assert result.report.passed
    reloaded = convslim.load_compressed(resnet20(), x, tmp_path / "out")
    program = torch.export.load(str(tmp_path / "out" / "compressed.pt2"))
    xs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(xs), result.model(xs))
        torch.testing.assert_close(program.module()(xs), result.model(xs))


def test_failure_leaves_no_output_folder(model, tmp_path, monkeypatch):
    import convslim.verify.pipeline as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "write_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convslim.compress(model, torch.randn(1, 3, 32, 32), out_dir=tmp_path / "out", measure_speed=False)
    assert list(tmp_path.iterdir()) == []


def test_option_groups_and_plain_keywords_mean_the_same(model, tmp_path):
    from convslim.errors import UsageError
    from convslim.options import Checks, Output, gather

    budget, checks, output, form = gather({"rank": 2, "tolerance": 1e-3, "out_dir": "o", "overwrite": True})
    assert checks == Checks(tolerance=1e-3) and output == Output("o", overwrite=True) and form == {"rank": 2}
    assert budget.limits() == {"target_speedup": None, "target_macs": None, "max_error": None}
    with pytest.raises(UsageError, match="either checks= or verify="):
        convslim.compress(model, torch.randn(1, 3, 32, 32), verify=False, checks=Checks(verify=False))
    result = convslim.compress(model, torch.randn(1, 3, 32, 32), rank=1, checks=Checks(verify=False))
    assert result.report.parity == {} and len(result.plan.rewritten) > 0


def test_the_original_is_exported_once_per_run(tmp_path, monkeypatch):
    """The planner times the bytes the pipeline ships: one export of the original for a budgeted compress under
    cpu-int8 (it was three, four under cpu-int8), and a confirmed round is exported once."""
    import convslim.runtime.export as export
    from convslim.convert.dwsep import DepthwiseSeparableConv
    from convslim.runtime.deploy import DeploySettings
    from convslim.runtime.int8 import Calibration, Int8Settings

    exported = []
    real = export.export_program

    def counting(model, *args, **kwargs):
        rewritten = any(isinstance(m, DepthwiseSeparableConv) for m in model.modules())
        exported.append("rewritten" if rewritten else "original")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(export, "export_program", counting)
    monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path / "cache"))
    int8 = Int8Settings(speed_check=False, auto_exclude=False, calibration_batch=8)
    deploy = DeploySettings(
        runtime="cpu-int8", calibration=Calibration(torch.randn(16, 3, 16, 16)), int8=int8
    )
    result = convslim.compress(
        Small(width=32).eval(),
        torch.randn(1, 3, 16, 16),
        to="dwsep",
        target_speedup=3.0,  # int8 alone already gives the fake timer's 2x
        plan_batch=4,
        out_dir=tmp_path / "out",
        measure_speed=False,
        deploy=deploy,
    )
    rounds = result.plan.planning["rounds"]
    assert rounds and exported.count("original") == 1
    # per-layer micro-models aside (another exporter), each round's model once, even when measured twice to
    # confirm it, then model.onnx
    assert exported.count("rewritten") == len(rounds) + 1
