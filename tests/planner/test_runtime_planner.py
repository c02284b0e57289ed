"""The planner on a runtime target: latencies cached per precision, and the closed loop times the very ONNX
bytes the pipeline ships (same exporter, same settings)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from convslim.api import compress, prepare
from convslim.planner import LatencyCache, latency
from convslim.planner.candidates import candidates_for, parse_forms
from convslim.runtime.deploy import DeploySettings
from convslim.runtime.export import ExportSettings


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    return prepare(Small().eval(), torch.randn(1, 3, 10, 10))


def test_latency_cache_keyed_by_precision(prepared, tmp_path):
    site = next(s for s in prepared.sites if s.name == "b")
    conv = dict(prepared.traced.module.named_modules())["b"]
    cand = candidates_for(site, parse_forms("dwsep"), {"dwsep": [{"rank": 1}]})[0][0]
    replacement = cand.build(conv)
    keys = {
        t: latency.cache_key(site.in_shape, conv, "dwsep", {}, replacement, 4, t) for t in ("cpu", "cpu-int8")
    }
    assert keys["cpu"] != keys["cpu-int8"]

    cache = LatencyCache(tmp_path)
    sites = {s.name: s for s in prepared.sites}
    for target in ("cpu-int8", "cpu", "cpu-int8"):
        fresh = candidates_for(site, parse_forms("dwsep"), {"dwsep": [{"rank": 1}]})[0][:1]
        latency.measure_candidates(prepared.traced.module, sites, fresh, 4, target, cache, seconds=0.02)
        assert "ratio" in fresh[0].measured
    assert (cache.misses, cache.hits) == (2, 1)  # int8 measured once, fp32 once, then int8 from the cache
    stored = json.loads((tmp_path / latency.CACHE_FILE).read_text())
    assert len(stored) == 2


def test_planner_times_the_shipped_bytes(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path / "cache"))
    result = compress(
        prepared.original,
        prepared.example_inputs,
        to="dwsep",
        target_speedup=1.2,
        plan_batch=4,
        out_dir=tmp_path / "out",
        measure_speed=False,
        deploy=DeploySettings(export=ExportSettings(opset=18)),  # the planner exports at the shipped opset
    )
    planning = result.plan.planning
    shipped = {
        n: hashlib.sha256((tmp_path / "out" / n).read_bytes()).hexdigest()
        for n in ("model.onnx", "original.onnx")
    }
    assert planning["original_onnx_sha256"] == shipped["original.onnx"]
    chosen = next(r for r in planning["rounds"] if r.get("chosen"))
    assert chosen["onnx_sha256"] == shipped["model.onnx"]
    assert {"speedup_iqr", "runs"} <= set(chosen)
