"""A tiny classifier shared by the runtime tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv (first) → depthwise → pointwise → linear: one node of every kind int8 treats apart."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    from convslim.runtime import export_model

    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    export_model(tiny, (torch.randn(1, 3, 12, 12),), path)
    return path
