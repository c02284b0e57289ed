"""Fine-tuning without data (``--data synthetic:N``, ``convslim.finetune.from_synthetic``): the synthetic images
feed calibration, stage 1 and stage 2; making them counts towards the minutes; the report and the terminal say
that no data was used, on how many images and how long making them took; what cannot work is one line, exit 2."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
import ranks
import torch
from torch import nn

from convslim import compress
from convslim.cli import main
from convslim.cli.args import files_to_save
from convslim.errors import UsageError
from convslim.finetune import from_synthetic, generation_settings
from convslim.finetune.datafree import SYNTHETIC_RECIPE
from convslim.inputs.data import ArrayData, load_data
from convslim.inputs.synthetic import SynthesisRecord, SynthesisSettings, SyntheticData

EXAMPLE = (torch.randn(ranks.EXAMPLE),)
MODEL_FLAGS = ["--arch", f"{ranks.__file__}:tiny_model", "--input-shape", "1,3,16,16"]


def quick(count: int = 16) -> SynthesisSettings:
    return SynthesisSettings(count=count, steps=5, batch_size=8, progress=False)


def made_already(seconds: float, count: int = 8) -> SyntheticData:
    record = SynthesisRecord(count, count, seconds, 1.0, 0.5)
    return SyntheticData(torch.randn(count, 3, 16, 16), None, f"synthetic:{count}", record=record)


def test_finetunes_on_synthetic_images_and_says_so(tiny):
    ft = from_synthetic(tiny, EXAMPLE, quick(), steps=2, batch_size=8, calibration_samples=16, progress=False)
    assert ft.train.y is None and ft.train.x.shape == (16, 3, 16, 16)
    assert torch.equal(ft.calibration, ft.train.x[:16])  # the planner's probes and parity checks get them too
    result = compress(
        tiny, EXAMPLE, to="dwsep", rank=1, finetune=ft.hook, calibration=ft.calibration, verify=False
    )
    report = result.report.finetune
    assert report["data"]["kind"] == "synthetic" and report["data"]["images"] == 16
    assert report["data"]["synthesis"]["bn_loss_end"] < report["data"]["synthesis"]["bn_loss_start"]
    assert report["stage1"]["layers"]  # stage 1 refit on them
    assert report["stage2_distill"]["steps"] > 0  # and stage 2 distilled on them, without labels
    assert list(report["summary"])[0] == "data"
    summary = result.report.summary()
    assert (
        "fine-tuning: data none — 16 synthetic images made from the model's BatchNorm statistics in"
        in summary
    )


def test_synthetic_images_get_mixup_unless_told_otherwise(tiny):
    made = from_synthetic(tiny, EXAMPLE, quick(), steps=2, progress=False)
    assert made.hook.inner.settings.mixup == SYNTHETIC_RECIPE["mixup"] > 0
    told = from_synthetic(tiny, EXAMPLE, quick(), steps=2, mixup=0.0, progress=False)
    assert told.hook.inner.settings.mixup == 0.0


def test_making_the_images_counts_towards_the_minutes(tiny):
    assert generation_settings(512, minutes=10).seconds == pytest.approx(180)  # at most 30 % of the budget
    assert generation_settings(512).seconds is None
    ft = from_synthetic(tiny, EXAMPLE, made_already(seconds=30), minutes=2, progress=False)
    assert ft.hook.inner.settings.minutes == pytest.approx(1.5)
    assert ft.hook.data["budget_minutes"] == 2 and ft.hook.data["generation_s"] == 30


def test_a_handful_of_real_images_join_the_synthetic_ones(tiny):
    real = ArrayData(torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long), "few/")
    ft = from_synthetic(tiny, EXAMPLE, made_already(seconds=1), real, progress=False)
    assert len(ft.train) == 12 and ft.train.y is None  # labels dropped: the teacher's outputs are the targets
    assert torch.equal(ft.calibration[:4], real.x)  # real first: what the parity checks compare on
    assert ft.hook.data["real_images"] == 4 and "4 unlabeled images of few/" in ft.hook.data["summary"]


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save(ranks.trained_tiny().state_dict(), path)
    return path


def test_cli_compress_without_data(tmp_path, capsys, weights):
    out = tmp_path / "out"
    argv = [
        "compress",
        str(weights),
        *MODEL_FLAGS,
        "--rank",
        "1",
        "--data",
        "synthetic:16",
        "--finetune-steps",
        "2",
    ]
    argv += ["--batch-size", "8", "--save-synthetic", "--no-speed", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (
        "convslim: no training data: 16 synthetic images made from the model's BatchNorm statistics in"
        in (captured.err)
    )
    assert "data none — 16 synthetic images" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["finetune"]["data"]["images"] == 16
    assert {p.name for p in out.iterdir()} == {Path(p).name for p in report["outputs"].values()}
    assert load_data(out / "synthetic.pt").x.shape == (16, 3, 16, 16)  # asked for: reusable as --data
    assert report["finetune"]["data"]["synthesis"]["settings"]["box"] is None  # off: no gain beside mixup
    settings = report["finetune"]["settings"]
    assert {k: settings[k] for k in SYNTHETIC_RECIPE} == SYNTHETIC_RECIPE  # the synthetic defaults
    assert (
        "Fine-tuned **without training data**, on 16 synthetic images made from"
        in (out / "report.md").read_text()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.pt"]


def test_images_are_written_only_when_asked(tiny):
    made = made_already(seconds=1)
    assert files_to_save(Namespace(save_synthetic=False), {"--data": made}) == {}
    assert list(files_to_save(Namespace(save_synthetic=True), {"--data": made})) == ["synthetic.pt"]
    with pytest.raises(UsageError, match="add --data synthetic"):
        files_to_save(Namespace(save_synthetic=True), {"--data": ArrayData(made.x)})


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


def mlp() -> MLP:
    return MLP()


def _fails_in_one_line(capsys, argv: list[str], out: Path, message: str) -> None:
    assert main([*argv, "--no-speed", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("spec", "message"), [("synthetic:0", "N must be ≥ 1"), ("synthetic:x", "synthetic:N")]
)
def test_cli_bad_count(tmp_path, capsys, weights, spec, message):
    argv = ["compress", str(weights), *MODEL_FLAGS, "--rank", "1", "--data", spec]
    _fails_in_one_line(capsys, argv, tmp_path / "out", message)


def test_cli_model_without_batchnorm_needs_data(tmp_path, capsys):
    from tests.cli_models import arch, save_small  # a model of two convs and no BatchNorm

    argv = ["compress", str(save_small(tmp_path)), *arch(), "--rank", "1", "--data", "synthetic"]
    _fails_in_one_line(
        capsys, argv, tmp_path / "out", "this model has none (with running statistics); give --data"
    )


def test_cli_model_that_does_not_take_images(tmp_path, capsys):
    path = tmp_path / "mlp.pt"
    torch.save(MLP().state_dict(), path)
    argv = [
        "compress",
        str(path),
        "--arch",
        f"{__file__}:mlp",
        "--input-shape",
        "1,6",
        "--data",
        "synthetic:8",
    ]
    _fails_in_one_line(capsys, argv, tmp_path / "out", "(one N×C×H×W input needed); give --data")
