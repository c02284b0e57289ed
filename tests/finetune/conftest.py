"""A tiny classifier and its rank-1 dwsep compression, shared by the fine-tuning tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convslim import apply, plan, prepare
from convslim.data import ArrayData


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


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: threading only adds overhead, and on a busy 2-core machine it is 10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        model.head.weight.mul_(20)  # logits spread like a trained classifier's
    return model.eval()


@pytest.fixture
def tiny_data(tiny):
    x = torch.randn(96, 3, 16, 16)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    return ArrayData(x, y, "tiny")


@pytest.fixture
def tiny_compressed(tiny):
    example = (torch.randn(1, 3, 16, 16),)
    prepared = prepare(tiny, example)
    p = plan(prepared, to="dwsep", rank=1)
    return prepared, p, apply(prepared, p)
