"""What a finished run says: every tensor output checked by name, damage said plainly, the report complete,
Ctrl-C acknowledged with exit 130 (issue 13, cases 3, 6, 8 and 9), and the CLI paths issue 12 found untested."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from convslim.cli import main
from convslim.report.report import Report, agrees
from convslim.report.sections import PlanSection, RewriteSection, VerifySection
from tests.cli_models import arch, save_small

PLANNER_MODELS = Path(__file__).resolve().parent / "planner" / "test_planner.py"


@pytest.fixture
def weights(tmp_path) -> Path:
    return save_small(tmp_path)


@pytest.fixture
def train_npz(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    np.savez(path, x=rng.random((32, 3, 16, 16), dtype=np.float32), y=rng.integers(0, 10, 32))
    return path


def compress(model: Path, out: Path, *extra: str) -> int:
    return main(["compress", str(model), *extra, "--out", str(out), "--no-speed", "--quiet"])


@pytest.mark.parametrize(
    ("factory", "names"),
    [("dict_out", ["output['logits']", "output['features']"]), ("tuple_out", ["output[0]", "output[1]"])],
)
def test_every_output_is_checked_by_name(tmp_path, weights, factory, names):
    out = tmp_path / "out"
    assert compress(weights, out, *arch(factory), "--rank", "3") == 0
    parity = json.loads((out / "report.json").read_text())["parity"]
    outputs = parity["onnx_vs_torch"]["outputs"]
    assert [o["name"] for o in outputs] == names
    assert all(o["max_abs_err"] <= o["tolerance"] and o["passed"] for o in outputs)
    assert [o["name"] for o in parity["compressed_vs_original"]["outputs"]] == names


def test_a_wrong_second_output_fails_parity(tmp_path, monkeypatch):
    from convslim.verify.parity import onnx_parity

    model = torch.nn.Conv2d(3, 4, 3).eval()

    class Two(torch.nn.Module):
        def __init__(self, broken: bool):
            super().__init__()
            self.conv, self.broken = model, broken

        def forward(self, x):
            y = self.conv(x)
            return y, y * (3.0 if self.broken else 2.0)

    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "two.onnx"
    torch.onnx.export(Two(False).eval(), (x,), str(path), dynamo=True)
    result = onnx_parity(path, Two(True), [(x,)])
    assert [o["passed"] for o in result["outputs"]] == [True, False]
    assert result["passed"] is False


def test_damage_is_said_plainly():
    plan = PlanSection("dwsep", {})
    totals = {"params_before": 1, "params_after": 1, "macs_before": 1, "macs_after": 1}
    rewrite = RewriteSection("fx", (), totals)
    closeness = {
        "rel_l2": 1.4,
        "cosine": -0.48,
        "top1_agreement": 0.0,
        "n_samples": 5,
        "inputs": "5 random-noise samples (no data given)",
    }
    passed = {"passed": True, "max_abs_err": 0.0, "tolerance": 1e-4}
    report = Report(plan, rewrite, verify=VerifySection(passed, passed, closeness))
    assert not agrees(report.parity["compressed_vs_original"])
    text = report.summary()
    assert "on 5 random-noise samples" in text
    assert "WARNING: the compressed model no longer agrees with the original" in text and "--data" in text
    agreeing = VerifySection(passed, passed, {**closeness, "cosine": 0.999, "top1_agreement": 0.98})
    assert "WARNING" not in Report(plan, rewrite, verify=agreeing).summary()


def test_comparison_uses_real_data_when_given(tmp_path, weights, train_npz):
    out = tmp_path / "out"
    code = compress(
        weights, out, *arch(), "--data", str(train_npz), "--finetune-steps", "2", "--batch-size", "8"
    )
    assert code == 0
    closeness = json.loads((out / "report.json").read_text())["parity"]["compressed_vs_original"]
    assert closeness["inputs"] == "32 samples of the calibration data (--data)"
    assert closeness["n_samples"] == 32


def test_report_records_how_it_was_made(tmp_path, capsys, weights):
    out = tmp_path / "out"
    assert compress(weights, out, *arch(), "--to", "octave") == 0
    printed = capsys.readouterr().out
    assert "compressed_state_dict.pt" in printed and "speed not measured" in printed
    report = json.loads((out / "report.json").read_text())
    run = report["run"]
    assert run["model"] == str(weights) and run["arch"].endswith("cli_models.py:small")
    assert run["input_shape"] == "1,3,16,16" and run["input_shapes"] == [[1, 3, 16, 16]]
    assert set(run["versions"]) >= {"convslim", "torch", "onnx", "onnxruntime"} and run["cpu"]
    assert run["cli_options"]["batch_size"] == 128 and run["cli_options"]["tolerance"] == 1e-4  # defaults too
    assert report["options"] == {"alpha": 0.5, "octave_region": True}  # the form's defaults, in force
    assert run["compress_options"]["measure_speed"] is False
    markdown = (out / "report.md").read_text()
    assert "## Run" in markdown and "speed not measured" in markdown
    assert max(len(line) for line in markdown.splitlines()) < 400  # per-channel arrays are summarised
    assert "## Layers" in markdown and "| conv2 | octave |" in markdown


def test_exclude_by_prefix(tmp_path):
    from tests.cli_models import Nested

    weights = tmp_path / "nested.pt"
    torch.save(Nested().state_dict(), weights)
    out = tmp_path / "plan.json"
    assert main(["plan", str(weights), *arch("nested"), "--exclude", "block", "--out", str(out)]) == 0
    layers = {d["name"]: d for d in json.loads(out.read_text())["layers"]}
    assert {n for n, d in layers.items() if d["skipped_reason"] == "excluded by --exclude"} == {
        "block.0",
        "block.2",
    }
    assert layers["block_extra"]["form"] == "dwsep" and layers["stem"]["form"] == "dwsep"


@pytest.mark.parametrize("budget", [["--target-speedup", "1.05"], ["--max-error", "0.5"]])
def test_budget_flags_through_the_cli(tmp_path, monkeypatch, capsys, budget):
    from tests.planner.test_planner import Tiny

    monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "tiny.pt"
    torch.save(Tiny().state_dict(), weights)
    model = [str(weights), "--arch", f"{PLANNER_MODELS}:Tiny", "--input-shape", "1,3,12,12"]
    out = tmp_path / "plan.json"
    argv = [
        "plan",
        *model,
        "--to",
        "dwsep,spatial",
        *budget,
        "--plan-batch",
        "2",
        "--plan-threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    planning = json.loads(out.read_text())["planning"]
    assert planning["round_threads"] == 1
    key = budget[0][2:].replace("-", "_")
    assert planning["budget"] == {key: float(budget[1])}
    if key == "max_error":
        assert planning["predicted_error"] <= 0.5
    assert "predicted" in capsys.readouterr().out


def test_ctrl_c_during_fine_tuning_exits_130_and_says_how_far(
    tmp_path, capsys, weights, train_npz, monkeypatch
):
    import convslim.finetune.recipe as recipe

    real = recipe.reconstruct

    def interrupted_after_one_layer(teacher, student, names, batches, how):
        rows, heads = real(teacher, student, names[:1], batches, how)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while stage 1 runs: the rest of it is skipped
        more, more_heads = real(teacher, student, names[1:], batches, how)
        return rows + more, {**heads, **more_heads}

    monkeypatch.setattr(recipe, "reconstruct", interrupted_after_one_layer)
    out = tmp_path / "out"
    code = compress(
        weights, out, *arch(), "--data", str(train_npz), "--finetune-steps", "50", "--batch-size", "8"
    )
    err = capsys.readouterr().err
    assert code == 130
    assert "SIGINT received" in err and "best weights so far" in err
    finetune = json.loads((out / "report.json").read_text())["finetune"]
    assert finetune["interrupted"] is True
    assert finetune["progress"] == "stage 1: 1 of 2 layers refit; stage 2: 0 of 50 steps"
    assert "stage 1: 1 of 2 layers refit" in (out / "report.md").read_text()
