"""A small CNN for scikit-learn's 8×8 handwritten digits, upsampled to 32×32 (the quickstart's model).

Example:
    >>> digits_cnn()(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *_block(1, width, 1),
            *_block(width, width, 1),
            *_block(width, 2 * width, 2),
            *_block(2 * width, 2 * width, 1),
            *_block(2 * width, 2 * width, 2),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def digits_cnn(width: int = 32, num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(width, num_classes)
