"""A zoo of small models in the wiring of the architectures users bring: residual, bottleneck, pre-activation,
squeeze-excitation, DenseNet concat, Inception 1x7/7x1, dilated, transposed (decoder), OctConv with functional
convs in every call form, an ENet-like net that torch.fx cannot trace (max-unpool, ``torch.zeros(*sizes)``) and
multi-output heads. The efficient nets (MobileNetV2/V3, EfficientNet, ShuffleNetV2, ResNeXt) are in
``convslim.models.zoo_mobile``.

Each model is a few layers with few channels, so the whole zoo runs through plan → apply → export → parity in
seconds; ``ZOO`` maps a name to (factory, input shape). Weights are random, BatchNorm statistics randomised by
``randomize_bn_`` so that folding is not the identity.

Example:
    >>> factory, shape = ZOO["octconv"]
    >>> factory()(torch.randn(shape)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convslim.models.blocks import Head, SqueezeExcite, conv_bn, randomize_bn_


class Residual(nn.Module):
    """ResNet basic blocks, one with a strided 1x1 projection shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.a1, self.a2 = conv_bn(16, 16), conv_bn(16, 16, act=None)
        self.b1, self.b2 = conv_bn(16, 32, stride=2), conv_bn(32, 32, act=None)
        self.proj = conv_bn(16, 32, 1, stride=2, act=None)
        self.head = Head(32)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.proj(x) + self.b2(self.b1(x)))
        return self.head(x)


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 → 1x1 expand, identity and projection shortcuts."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.reduce, self.mid, self.expand = conv_bn(32, 16, 1), conv_bn(16, 16), conv_bn(16, 32, 1, act=None)
        self.reduce2, self.mid2 = conv_bn(32, 16, 1), conv_bn(16, 16, stride=2)
        self.expand2, self.proj = conv_bn(16, 64, 1, act=None), conv_bn(32, 64, 1, stride=2, act=None)
        self.head = Head(64)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.expand(self.mid(self.reduce(x))))
        x = F.relu(self.proj(x) + self.expand2(self.mid2(self.reduce2(x))))
        return self.head(x)


class PreAct(nn.Module):
    """Pre-activation blocks: BN → ReLU → conv (the BN follows the add, so most BNs cannot fold into a conv)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.head(F.relu(self.bn3(x + out)))


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.c1, self.c2 = conv_bn(16, 32, stride=2), conv_bn(32, 32, act=None)
        self.se = SqueezeExcite(32, 8)
        self.proj = conv_bn(16, 32, 1, stride=2, act=None)
        self.head = Head(32)

    def forward(self, x):
        x = self.stem(x)
        return self.head(F.relu(self.proj(x) + self.se(self.c2(self.c1(x)))))


class DenseNet(nn.Module):
    """Dense block (each layer sees the concat of all before it), transition 1x1 + avg pool."""

    def __init__(self, growth: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(16 + i * growth), nn.ReLU(), conv_bn(16 + i * growth, growth))
            for i in range(3)
        )
        self.transition = nn.Sequential(nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False))
        self.head = Head(24)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return self.head(F.avg_pool2d(self.transition(x), 2))


class Inception(nn.Module):
    """Inception-C-like branches: 1x1, 1x1 → 1x7 → 7x1, 3x3 avg pool → 1x1, concatenated."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.b1 = conv_bn(16, 8, 1)
        self.b7 = nn.Sequential(conv_bn(16, 12, 1), conv_bn(12, 12, (1, 7)), conv_bn(12, 16, (7, 1)))
        self.bpool = conv_bn(16, 8, 1)
        self.head = Head(32)

    def forward(self, x):
        x = self.stem(x)
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1)
        return self.head(torch.cat([self.b1(x), self.b7(x), self.bpool(pooled)], dim=1))


class Dilated(nn.Module):
    """Dilated-ResNet / DeepLab-like: dilations 2 and 4 keep the resolution, a 1x1 classifier per pixel."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2)
        self.d2, self.d4 = conv_bn(16, 16, dilation=2), conv_bn(16, 16, dilation=4)
        self.classifier = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.d4(self.d2(x)))
        return F.interpolate(self.classifier(x), scale_factor=2.0, mode="bilinear", align_corners=False)


class Transposed(nn.Module):
    """ERFNet/CenterNet-like: 3x1/1x3 factorised and dilated convs, a transposed-conv decoder."""

    def __init__(self):
        super().__init__()
        self.down = conv_bn(3, 16, stride=2)
        self.v, self.h = conv_bn(16, 16, (3, 1)), conv_bn(16, 16, (1, 3), act=None)
        self.dil = conv_bn(16, 16, dilation=2)
        self.up = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn_up = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.down(x)
        x = F.relu(x + self.h(self.v(x)))
        x = self.dil(x)
        return self.out(F.relu(self.bn_up(self.up(x))))


class MultiHead(nn.Module):
    """A shared trunk and two heads (class logits and a dense map), returned as a tuple."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(conv_bn(3, 16), conv_bn(16, 16, stride=2))
        self.cls = Head(16)
        self.dense = nn.Sequential(conv_bn(16, 16), nn.Conv2d(16, 3, 1))

    def forward(self, x):
        x = self.trunk(x)
        return self.cls(x), self.dense(x)


def _zoo_entries() -> dict:
    from convslim.models.zoo_mobile import MOBILE_ZOO
    from convslim.models.zoo_special import SPECIAL_ZOO

    small = (1, 3, 16, 16)
    return {
        "residual": (Residual, small),
        "bottleneck": (Bottleneck, small),
        "preact": (PreAct, small),
        "se": (SENet, small),
        "densenet": (DenseNet, small),
        "inception": (Inception, small),
        "dilated": (Dilated, small),
        "transposed": (Transposed, small),
        "multihead": (MultiHead, small),
        **SPECIAL_ZOO,
        **MOBILE_ZOO,
    }


ZOO: dict = _zoo_entries()


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """The zoo model ``name`` with seeded random weights and randomised BatchNorm, and its input shape."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    return randomize_bn_(factory(), seed), shape
