"""Building blocks shared by the zoo models: conv + BN + activation, a classifier head, squeeze-excitation,
and ``randomize_bn_`` (random-weight models otherwise have identity BatchNorms, and folding them proves nothing).

Example:
    >>> conv_bn(3, 16, stride=2)(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 16, 4, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k=3, stride=1, act: type | None = nn.ReLU, **conv):
    """Conv (no bias, 'same'-like padding) + BatchNorm + activation; ``conv``: more ``nn.Conv2d`` arguments
    (``groups``, ``dilation``)."""
    dilation = conv.get("dilation", 1)
    pad = tuple(dilation * (d - 1) // 2 for d in ((k, k) if isinstance(k, int) else k))
    layers = [nn.Conv2d(cin, cout, k, stride, pad, bias=False, **conv), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


@torch.no_grad()
def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms (random-weight models have identity BNs)."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


class Head(nn.Module):
    def __init__(self, cin: int, classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """Global pool → 1x1 reduce → act → 1x1 expand → gate (sigmoid, or hard-sigmoid in MobileNetV3)."""

    def __init__(self, channels: int, reduced: int, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(self.act(self.reduce(s))))
