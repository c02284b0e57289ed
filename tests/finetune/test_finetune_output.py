"""``finetune_output`` / ``convslim finetune``: fine-tuning as its own step on a compress output folder."""

from __future__ import annotations

import json

import torch

from convslim import compress, finetune_output, load_compressed
from convslim.cli import main
from convslim.finetune import finetune

EXAMPLE = (torch.randn(1, 3, 16, 16),)


def _hook(data):
    return finetune(data, data, steps=6, batch_size=32, calibration_samples=64, progress=False)


def test_compress_then_finetune_equals_one_call(tiny, tiny_data, tmp_path):
    """Same plan, same seed, one process: ``compress --data`` in one call and ``compress`` then ``finetune``
    give the same weights, and the fine-tuned folder reloads without unpickling code."""
    one = compress(tiny, EXAMPLE, to="dwsep", rank=1, finetune=_hook(tiny_data), verify=False)
    compress(tiny, EXAMPLE, to="dwsep", rank=1, out_dir=tmp_path / "step1", measure_speed=False)
    two = finetune_output(
        tmp_path / "step1", tiny, EXAMPLE, _hook(tiny_data), out_dir=tmp_path / "step2", measure_speed=False
    )
    assert one.report.finetune["accuracy"] == two.report.finetune["accuracy"]
    for key, value in one.model.state_dict().items():
        assert torch.equal(value, two.model.state_dict()[key]), key
    assert two.report.passed
    reloaded = load_compressed(tiny, EXAMPLE, tmp_path / "step2")
    x = tiny_data.x[:4]
    assert torch.allclose(reloaded(x), two.model(x), atol=1e-6)
    report = json.loads((tmp_path / "step2" / "report.json").read_text())
    assert report["finetune"]["stage2_distill"]["steps"] > 0


def test_finetuning_a_finetuned_output_keeps_its_weights_through_stage1(tiny, tiny_data, tmp_path):
    """A folder fine-tuned already is resumed: stage 1 is skipped (a layer-wise refit would undo the end-to-end
    training), the report says so, and stage 1 leaves the folder's weights as they were (same score)."""
    compress(
        tiny,
        EXAMPLE,
        to="dwsep",
        rank=1,
        finetune=_hook(tiny_data),
        out_dir=tmp_path / "tuned",
        measure_speed=False,
    )
    hook = finetune(tiny_data, tiny_data, steps=2, batch_size=32, calibration_samples=64, progress=False)
    again = finetune_output(
        tmp_path / "tuned", tiny, EXAMPLE, hook, out_dir=tmp_path / "again", measure_speed=False
    )
    tuned = load_compressed(tiny, EXAMPLE, tmp_path / "tuned")
    stage1 = again.report.finetune["stage1"]
    assert stage1["layers"] == [] and "fine-tuned already" in stage1["skipped"]
    assert again.report.finetune["accuracy"]["stage1"] == again.report.finetune["accuracy"]["compressed"]
    assert again.report.finetune["progress"].startswith("stage 1: skipped")
    assert any("stage 1 (layer-wise refit) skipped" in note for note in again.report.notes)
    x = tiny_data.x[:8]
    fresh = compress(tiny, EXAMPLE, to="dwsep", rank=1, verify=False).model
    assert not torch.allclose(tuned(x), fresh(x), atol=1e-4)  # the folder really holds tuned weights


def test_finetune_cli_refuses_bad_input(tiny, tmp_path, capsys):
    weights = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), weights)
    arch = ["--arch", "ranks.py:tiny_model", "--import-path", str(tmp_path), "--input-shape", "1,3,16,16"]
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "nowhere"), str(weights), *arch, "--data", str(weights)], "no such folder"),
        ([str(tmp_path), str(weights), *arch], "needs --data"),
    ]
    for argv, message in cases:
        assert main(["finetune", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not out.exists()


def test_budget_spent_by_stage1_leaves_phase_a_no_steps(tiny, tiny_data):
    """A time budget stage 1 already used up gives phase A no time (it once got a negative, unbounded one)."""
    hook = finetune(
        tiny_data, None, steps=40, minutes=1e-5, batch_size=32, calibration_samples=64, progress=False
    )
    _, report = hook(*_prepared(tiny))
    assert report["stage2_blocks"]["steps"] == 0


def _prepared(model):
    from convslim import apply, plan, prepare

    prepared = prepare(model, EXAMPLE)
    p = plan(prepared, to="dwsep", rank=1)
    return prepared, apply(prepared, p), p
