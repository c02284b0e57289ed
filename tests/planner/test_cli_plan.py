"""``convslim plan`` writes a budgeted plan, and ``compress --plan`` applies it (CLI end to end, tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from convslim.cli import main

HERE = Path(__file__).resolve().parent


def test_plan_then_compress_with_the_plan(tmp_path, monkeypatch, capsys):
    from tests.planner.test_planner import Tiny

    monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "tiny.pt"
    torch.save(Tiny().state_dict(), weights)
    model = [str(weights), "--arch", f"{HERE / 'test_planner.py'}:Tiny", "--input-shape", "1,3,12,12"]
    plan_file = tmp_path / "plan.json"
    args = ["plan", *model, "--to", "dwsep", "--target-macs", "0.6", "--plan-batch", "2", "--quiet"]
    assert main([*args, "--out", str(plan_file)]) == 0
    raw = json.loads(plan_file.read_text())
    assert raw["planning"]["budget"] == {"target_macs": 0.6}
    assert all(d["measured"]["ratio"] < 1 for d in raw["layers"] if d["form"])
    assert "planning" in capsys.readouterr().out
    assert main([*args, "--out", str(plan_file)]) == 2  # exists: refuses without --overwrite
    out = tmp_path / "out"
    code = main(["compress", *model, "--plan", str(plan_file), "--out", str(out), "--no-speed", "--quiet"])
    assert code == 0
    assert json.loads((out / "plan.json").read_text())["layers"] == raw["layers"]
