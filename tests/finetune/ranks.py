"""What each rank runs in the torchrun / multi-process tests (test_distributed.py), and the same alone.

Every scenario builds the same tiny model and data from fixed seeds, runs one piece of fine-tuning and saves what
the test compares under ``folder``: ``<scenario>-rank<r>.pt`` in a process group, ``<scenario>-single.pt`` alone.
Also the ``--arch`` factory for the CLI test (``ranks.py:tiny_model``).
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from convslim import apply, compress, parallel, plan, prepare
from convslim.finetune import finetune
from convslim.finetune.reconstruct import reconstruct
from convslim.inputs.data import ArrayData
from convslim.inputs.synthetic import SynthesisSettings, synthesize

EXAMPLE = (1, 3, 16, 16)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def tiny_model() -> Tiny:
    return Tiny()


def trained_tiny() -> Tiny:
    """Fixed weights with non-trivial BatchNorm statistics and spread logits, like a trained classifier."""
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        model.head.weight.mul_(20)
    return model.eval()


def tiny_data(n: int = 96) -> ArrayData:
    x = torch.randn(n, *EXAMPLE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = trained_tiny()(x).argmax(1)
    return ArrayData(x, y, "tiny")


def _compressed(to="dwsep", **options):
    prepared = prepare(trained_tiny(), (torch.randn(EXAMPLE),))
    p = plan(prepared, to=to, **options)
    return prepared, p, apply(prepared, p)


def stage1(folder: Path, tag: str) -> None:
    """Stage 1 alone, for a least-squares form (dwsep) and a gradient-fitted one (spatial)."""
    out = {}
    x = tiny_data().x
    calibration = [(x[i : i + 32], None) for i in range(0, len(x), 32)]
    for to, options in (("dwsep", {"rank": 1}), ("spatial", {"rank": 4})):
        prepared, p, student = _compressed(to, **options)
        names = [d.name for d in p.rewritten]
        rows, _ = reconstruct(prepared.traced.module, student, names, calibration)
        out[to] = {"state": student.state_dict(), "rows": rows}
    torch.save(out, folder / f"stage1-{tag}.pt")


def sgd(folder: Path, tag: str) -> None:
    """The whole fine-tune with SGD for a few steps: global batch 32 (16 per rank on 2 ranks)."""
    prepared, p, student = _compressed("dwsep", rank=1)
    hook = finetune(
        tiny_data(), None, steps=4, batch_size=32, optimizer="sgd", lr=0.05, augment=False,
        calibration_samples=64, channels_last=False, progress=False, sync_batchnorm="on",
    )  # fmt: skip
    model, report = hook(prepared, student, p)
    torch.save({"state": model.state_dict(), "report": report}, folder / f"sgd-{tag}.pt")


def full(folder: Path, tag: str) -> None:
    """compress with fine-tuning into ``out-<tag>``: only rank 0 may write."""
    hook = finetune(tiny_data(), tiny_data(), steps=6, batch_size=32, calibration_samples=64, progress=False)
    example = (torch.randn(EXAMPLE),)
    result = compress(
        trained_tiny(), example, to="dwsep", rank=1, finetune=hook, out_dir=folder / f"out-{tag}",
        measure_speed=False,
    )  # fmt: skip
    torch.save({"report": result.report.finetune}, folder / f"full-{tag}.pt")


class SignalOnRank1:
    """(x, y) batches; on rank 1, SIGTERM to this process once ``after`` batches were taken."""

    def __init__(self, data: ArrayData, after: int):
        self.data, self.after, self.taken = data, after, 0

    def __iter__(self):
        for x, y in self.data.batches(32):
            self.taken += 1
            if self.taken == self.after and parallel.rank() == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield x, y


def sigterm(folder: Path, tag: str) -> None:
    source = SignalOnRank1(tiny_data(), after=8)  # past the 2 calibration batches, inside stage 2
    hook = finetune(source, tiny_data(), steps=10_000, batch_size=32, calibration_samples=64, progress=False)
    result = compress(
        trained_tiny(), (torch.randn(EXAMPLE),), to="dwsep", rank=1, finetune=hook,
        out_dir=folder / f"interrupted-{tag}", measure_speed=False,
    )  # fmt: skip
    torch.save({"report": result.report.finetune}, folder / f"sigterm-{tag}.pt")


def synthetic(folder: Path, tag: str) -> None:
    """Images made from the model's BatchNorm statistics: 5 batches (8, 8, 8, 8, 4), so 2 ranks split them
    unevenly (rank 0 makes 3, rank 1 makes 2)."""
    settings = SynthesisSettings(count=36, batch_size=8, steps=6, progress=False)
    made = synthesize(trained_tiny(), (torch.randn(EXAMPLE),), settings)
    torch.save({"x": made.x, "record": made.record.to_dict()}, folder / f"synthetic-{tag}.pt")


SCENARIOS = {"stage1": stage1, "sgd": sgd, "full": full, "sigterm": sigterm, "synthetic": synthetic}


def worker(rank: int, world: int, port: int, folder: str, scenarios: list[str]) -> None:
    """One rank (``torch.multiprocessing`` entry point): join a gloo group, run ``scenarios`` in order."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    try:
        for name in scenarios:
            SCENARIOS[name](Path(folder), f"rank{rank}")
    finally:
        dist.destroy_process_group()
