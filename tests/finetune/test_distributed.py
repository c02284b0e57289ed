"""Fine-tuning on several processes (gloo on CPU): the result does not depend on the number of ranks, only rank 0
writes, and a signal on one rank stops all of them with a valid interrupted output.

Two ranks run every scenario of ``ranks.py`` in one ``torch.multiprocessing`` spawn (module fixture); each test
compares with the same scenario run alone in this process. nccl needs GPUs: that test skips without two.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ranks
import torch
import torch.multiprocessing as mp

from convslim import load_compressed
from convslim.cli import main

TIMEOUT_S = 600  # a hang (a collective one rank never reaches) fails the test instead of stalling CI
OUTPUT_FILES = {
    "model.onnx",
    "compressed.pt2",
    "plan.json",
    "compressed_state_dict.pt",
    "report.json",
    "report.md",
}


def _check_output(folder: Path) -> dict:
    """Every file the report lists is there, and nothing else; returns the report."""
    report = json.loads((folder / "report.json").read_text())
    names = {p.name for p in folder.iterdir()}
    assert names == {Path(p).name for p in report["outputs"].values()} and names >= OUTPUT_FILES
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(folder: Path, scenarios: list[str], world: int = 2) -> None:
    args = (world, _free_port(), str(folder), scenarios)
    context = mp.start_processes(ranks.worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"{world} ranks did not finish {scenarios} within {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ranks")
    _spawn(folder, ["stage1", "sgd", "full", "sigterm", "synthetic"])
    return folder


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)  # written by this test's own workers


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_stage1_same_for_one_and_two_ranks(two_ranks, tmp_path):
    ranks.stage1(tmp_path, "single")
    alone, split = _load(tmp_path / "stage1-single.pt"), _load(two_ranks / "stage1-rank0.pt")
    other = _load(two_ranks / "stage1-rank1.pt")
    for form in ("dwsep", "spatial"):  # least squares from summed normal equations; summed gradients
        # only the float summation order differs (float64 normal equations, float32 convs on half batches)
        assert _max_diff(split[form]["state"], alone[form]["state"]) < 1e-5, form
        assert _max_diff(split[form]["state"], other[form]["state"]) == 0.0  # ranks agree exactly
        for a, b in zip(split[form]["rows"], alone[form]["rows"], strict=True):
            assert a["method"] == b["method"]
            assert a["error_after"] == pytest.approx(b["error_after"], rel=1e-5)


def test_synthetic_images_same_for_one_and_two_ranks(two_ranks, tmp_path):
    """--data synthetic under torchrun: the ranks make disjoint batches (each seeded by its index) and share them,
    so every rank holds the images one process makes, up to float noise."""
    ranks.synthetic(tmp_path, "single")
    alone, split = _load(tmp_path / "synthetic-single.pt"), _load(two_ranks / "synthetic-rank0.pt")
    assert split["x"].shape == alone["x"].shape == (36, 3, 16, 16)
    assert split["record"]["ranks"] == 2 and alone["record"]["ranks"] == 1
    torch.testing.assert_close(split["x"], alone["x"], rtol=1e-5, atol=1e-5)
    assert torch.equal(split["x"], _load(two_ranks / "synthetic-rank1.pt")["x"])  # ranks agree exactly


def test_two_ranks_half_batch_match_one_rank_full_batch(two_ranks, tmp_path):
    """SGD, no augmentation, global batch 32: 2 ranks × 16 against 1 × 32, through stage 1, block-wise and
    end-to-end distillation with the training BatchNorms synchronised. Tolerance 1e-4 absolute on every weight:
    float32 sums in another order over 4 steps (observed ~5e-6)."""
    ranks.sgd(tmp_path, "single")
    alone, split = _load(tmp_path / "sgd-single.pt"), _load(two_ranks / "sgd-rank0.pt")
    assert split["report"]["ranks"] == 2 and alone["report"]["ranks"] == 1
    assert split["report"]["batchnorm_statistics"] == "global batch (synced)"
    assert split["report"]["stage2_distill"]["steps"] == alone["report"]["stage2_distill"]["steps"] == 2
    assert _max_diff(split["state"], alone["state"]) < 1e-4
    assert _max_diff(split["state"], _load(two_ranks / "sgd-rank1.pt")["state"]) == 0.0


def test_only_rank0_writes(two_ranks):
    report = _check_output(two_ranks / "out-rank0")
    assert not (two_ranks / "out-rank1").exists()  # rank 1 was given its own --out and wrote nothing
    assert not [p for p in two_ranks.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert report["passed"] and report["finetune"]["ranks"] == 2
    ft0, ft1 = (_load(two_ranks / f"full-rank{r}.pt")["report"] for r in (0, 1))
    assert ft0["accuracy"] == ft1["accuracy"]  # validation summed over ranks: one score, one best choice


def test_sigterm_on_one_rank_stops_both(two_ranks):
    ft0, ft1 = (_load(two_ranks / f"sigterm-rank{r}.pt")["report"] for r in (0, 1))  # both ranks returned
    assert ft1["interrupted"] and ft1["stopped_by"] == "SIGTERM"
    assert ft0["interrupted"] and ft0["stopped_by"] == "SIGTERM on another rank"
    assert ft0["stage2_blocks"]["steps"] == ft1["stage2_blocks"]["steps"] < 100
    out = two_ranks / "interrupted-rank0"
    assert json.loads((out / "report.json").read_text())["finetune"]["interrupted"] is True
    assert not (two_ranks / "interrupted-rank1").exists()
    reloaded = load_compressed(ranks.trained_tiny(), (torch.randn(ranks.EXAMPLE),), out)
    assert reloaded(ranks.tiny_data().x[:2]).shape == (2, 4)


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # PYTHONPATH passes on: the ranks import this checkout
    return subprocess.run(
        [*command, "-m", "convslim", *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env
    )


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 2, reason="nccl needs two CUDA GPUs; this machine has fewer"
            ),
        ),
    ],
)
def test_torchrun_finetune_a_compress_output(tmp_path, device):
    """``compress`` alone, then ``torchrun -m convslim finetune`` on 2 ranks: one new folder, reloadable."""
    weights, data = tmp_path / "tiny.pt", tmp_path / "train.pt"
    torch.save(ranks.trained_tiny().state_dict(), weights)
    torch.save((ranks.tiny_data().x, ranks.tiny_data().y), data)
    model = ["--arch", f"{ranks.__file__}:tiny_model", "--input-shape", "1,3,16,16"]
    first = tmp_path / "compressed"
    assert (
        main(["compress", str(weights), *model, "--rank", "1", "--no-speed", "--quiet", "--out", str(first)])
        == 0
    )
    tuned = tmp_path / "tuned"
    run = _torchrun(
        ["finetune", str(first), str(weights), *model, "--data", str(data), "--val-data", str(data),
         "--finetune-steps", "4", "--batch-size", "32", "--calibration-samples", "64", "--no-speed",
         "--quiet", "--device", device, "--out", str(tuned)]
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("outputs:") == 1  # rank 0 speaks for both
    report = _check_output(tuned)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compressed", "tiny.pt", "train.pt", "tuned"]
    assert report["finetune"]["ranks"] == 2 and report["passed"]
    assert any("fine-tuned from" in n for n in report["notes"])
    reloaded = load_compressed(ranks.trained_tiny(), (torch.randn(ranks.EXAMPLE),), tuned)
    state = torch.load(tuned / "compressed_state_dict.pt", weights_only=True)  # no pickled code
    assert _max_diff(reloaded.state_dict(), state) == 0.0
    assert _max_diff(state, torch.load(first / "compressed_state_dict.pt", weights_only=True)) > 0  # trained
