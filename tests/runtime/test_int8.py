"""int8 on a tiny model: quantize (QDQ, per-channel), agreement with fp32 within a reported tolerance, nodes
excluded by name or kind stay fp32 with their reason, the accuracy fallback puts kinds back in fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from convslim.errors import UsageError
from convslim.inputs.data import ArrayData
from convslim.runtime import get_target
from convslim.runtime.int8 import Calibration, Int8Settings, cpu_has_vnni, node_kinds

AGREEMENT = 0.9  # tolerance: int8 agrees with fp32 on at least 90 % of top-1 decisions of held-out inputs


@pytest.fixture(scope="module")
def calibration():
    torch.manual_seed(1)
    return Calibration.split(ArrayData(torch.randn(192, 3, 12, 12), source="random"), samples=128)


def _deploy(tiny_onnx, tmp_path, calibration, **settings):
    target = get_target("cpu-int8").with_settings(
        Int8Settings(calibration_batch=32, **{"speed_check": False, **settings})
    )
    return target.deploy(tiny_onnx, tmp_path / "model.int8.onnx", calibration)


def _fp32_weight_convs(path) -> set[str]:
    """Conv/Gemm nodes whose weight is a float initializer (not produced by a DequantizeLinear)."""
    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in floats}


def test_quantize_agrees_with_fp32(tiny_onnx, tmp_path, calibration):
    deployed = _deploy(tiny_onnx, tmp_path, calibration, auto_exclude=False)
    info = deployed.info
    ops = {n.op_type for n in onnx.load(str(deployed.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert info["settings"]["reduce_range"] is (not cpu_has_vnni())
    assert info["settings"]["per_channel"] and info["excluded"] == []
    assert info["check"]["metric"] == "agreement" and info["check"]["n"] == 64
    assert info["check"]["int8"] >= AGREEMENT, f"int8 agreed with fp32 on {info['check']['int8']:.1%}"
    assert _fp32_weight_convs(deployed.path) == set()


def test_excluded_nodes_stay_fp32(tiny_onnx, tmp_path, calibration):
    deployed = _deploy(
        tiny_onnx, tmp_path, calibration, auto_exclude=False, exclude=("depthwise conv", "Gemm")
    )
    kinds = {e["node"]: e["kind"] for e in deployed.info["excluded"]}
    assert sorted(kinds.values()) == ["depthwise conv", "linear"]
    assert all("--int8-exclude" in e["reason"] for e in deployed.info["excluded"])
    assert _fp32_weight_convs(deployed.path) == set(kinds)


def test_unknown_exclusion_is_a_usage_error(tiny_onnx, tmp_path, calibration):
    with pytest.raises(UsageError, match="--int8-exclude nope"):
        _deploy(tiny_onnx, tmp_path, calibration, exclude=("nope",))


def test_accuracy_fallback_lists_reasons(tiny_onnx, tmp_path, calibration):
    """With no loss allowed at all, kinds go back to fp32 while that helps; each one carries its reason."""
    deployed = _deploy(tiny_onnx, tmp_path, calibration, max_drop=-1.0)
    for entry in deployed.info["excluded"]:
        assert entry["reason"].startswith("int8 lost") and entry["kind"] in (
            "first conv",
            "linear",
            "depthwise conv",
            "pointwise conv",
        )
    assert _fp32_weight_convs(deployed.path) == {e["node"] for e in deployed.info["excluded"]}


def test_without_calibration_says_what_to_pass(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="--data .* or --calib-data"):
        get_target("cpu-int8").deploy(tiny_onnx, tmp_path / "x.onnx", None)


def test_node_kinds(tiny_onnx):
    kinds = sorted(node_kinds(onnx.load(str(tiny_onnx))).values())
    assert kinds == ["depthwise conv", "first conv", "linear", "pointwise conv"]


def test_deploy_bytes_quantizes_a_micro_model(tiny_onnx):
    fp32 = tiny_onnx.read_bytes()
    int8 = get_target("cpu-int8").deploy_bytes(fp32)
    session = get_target("cpu-int8").session(int8)
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 12, 12), np.float32)})[0]
    assert out.shape == (2, 10) and "QuantizeLinear" in {
        n.op_type for n in onnx.load_from_string(int8).graph.node
    }


def test_nodes_int8_makes_slower_stay_fp32(tiny_onnx, tmp_path, calibration, monkeypatch):
    """The per-node speed check, with the timing replaced: the depthwise conv 'measures' 1.5x slower in int8."""
    from convslim.runtime import int8_speed, int8_whole

    def fake_time(model, node, shape, batch, resolved, seconds):
        return 1.5 if node_kinds(model)[node.name] == "depthwise conv" else 0.7

    monkeypatch.setattr(int8_speed, "time_node", fake_time)
    monkeypatch.setattr(int8_whole, "speed_ratio", lambda reference, trial, x: 1.0)  # no kind faster in fp32
    deployed = _deploy(tiny_onnx, tmp_path, calibration, auto_exclude=False, speed_check=True)
    (entry,) = deployed.info["excluded"]
    assert entry["kind"] == "depthwise conv" and "1.50x the fp32 time" in entry["reason"]
    assert _fp32_weight_convs(deployed.path) == {entry["node"]}


def test_time_node_gives_a_ratio(tiny_onnx):
    from convslim.runtime import int8_speed
    from convslim.runtime.int8 import Int8Settings

    model = onnx.load(str(tiny_onnx))
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    resolved = Int8Settings().resolved()
    small = int8_speed.time_node(model, node, [3, 12, 12], 1, resolved, seconds=0.05)
    assert small is not None and small > 0
    again = int8_speed.time_node(model, node, [3, 12, 12], 1, resolved, seconds=0.05)
    assert again == pytest.approx(small, rel=1e-9)  # the fake timer: no scatter
    # at a large batch the int8 conv's cheaper compute outweighs its Quantize/Dequantize nodes' overhead
    assert int8_speed.time_node(model, node, [3, 12, 12], 256, resolved, seconds=0.05) < small


def test_as_shipped_keeps_what_deploy_keeps_in_fp32(tiny_onnx, tmp_path, monkeypatch):
    """The planner's whole-model rounds time the graph the user receives: the conv int8 'measures' slower stays
    fp32 there too, while a micro-model (per-layer timing) quantizes every node."""
    from convslim.runtime import int8_speed, int8_whole

    def fake_time(model, node, shape, batch, resolved, seconds):
        return 1.5 if node_kinds(model)[node.name] == "depthwise conv" else 0.7

    monkeypatch.setattr(int8_speed, "time_node", fake_time)
    monkeypatch.setattr(int8_whole, "speed_ratio", lambda reference, trial, x: 1.0)  # no kind faster in fp32
    target = get_target("cpu-int8").with_settings(Int8Settings(calibration_batch=2))
    fp32 = tiny_onnx.read_bytes()
    shipped, micro = tmp_path / "shipped.onnx", tmp_path / "micro.onnx"
    shipped.write_bytes(target.deploy_bytes(fp32, as_shipped=True))
    micro.write_bytes(target.deploy_bytes(fp32))
    kinds = node_kinds(onnx.load(str(shipped)))  # an fp32 conv keeps its float weight, so its kind shows
    assert {kinds[n] for n in _fp32_weight_convs(shipped)} == {"depthwise conv"}
    assert _fp32_weight_convs(micro) == set()


def _timed_as(ratios: list[float]):
    """A stand-in for ``int8_whole.speed_ratio`` answering ``ratios`` in turn, recording the trials it saw."""
    seen = []

    def fake(reference, trial, x):
        seen.append(trial)
        return ratios[len(seen) - 1]

    return fake, seen


def test_whole_model_keeps_a_kind_in_fp32_when_it_runs_faster(tiny_onnx, tmp_path, calibration, monkeypatch):
    """Kinds are tried in order (depthwise first): the first trial 'runs' 1.4x faster, the rest no faster, so
    only the depthwise conv is kept in fp32, with the measured ratio as its reason."""
    from convslim.runtime import int8_speed, int8_whole

    monkeypatch.setattr(int8_speed, "time_node", lambda *a: 0.7)  # alone, every conv is faster in int8
    fake, seen = _timed_as([1.4, 1.0, 1.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(int8_whole, "speed_ratio", fake)
    deployed = _deploy(tiny_onnx, tmp_path, calibration, auto_exclude=False, speed_check=True)
    (entry,) = deployed.info["excluded"]
    assert entry["kind"] == "depthwise conv"
    assert "1.40x faster with its depthwise convs in fp32" in entry["reason"]
    assert _fp32_weight_convs(deployed.path) == {entry["node"]}
    assert len(seen) == 5  # pointwise, first conv, linear, then the fp32 model itself


def test_whole_model_faster_in_fp32_quantizes_nothing(tiny_onnx, tmp_path, calibration, monkeypatch):
    """When the fp32 model beats the best int8 variant, every node stays fp32 and the file has no int8 node."""
    from convslim.runtime import int8_speed, int8_whole

    monkeypatch.setattr(int8_speed, "time_node", lambda *a: 0.7)
    fake, _ = _timed_as([1.0, 1.0, 1.0, 1.0, 1.25])
    monkeypatch.setattr(int8_whole, "speed_ratio", fake)
    deployed = _deploy(tiny_onnx, tmp_path, calibration, auto_exclude=False, speed_check=True)
    assert deployed.info["quantized_nodes"] == 0
    assert all(
        "1.25x faster in fp32 than with any node in int8" in e["reason"] for e in deployed.info["excluded"]
    )
    ops = {n.op_type for n in onnx.load(str(deployed.path)).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.timing
def test_speed_ratio_measures_two_models(tiny_onnx):
    from convslim.runtime.int8_whole import speed_ratio

    fp32 = tiny_onnx.read_bytes()
    ratio = speed_ratio(fp32, fp32, torch.randn(2, 3, 12, 12))
    assert 0.3 < ratio < 3  # the same model against itself: about 1 (timings scatter)
