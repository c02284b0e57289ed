"""The efficient nets people deploy to the edge, as layouts: MobileNetV2 (inverted residuals, ReLU6),
MobileNetV3 (hard-swish, hard-sigmoid squeeze-excitation, 5x5 depthwise), EfficientNet-B0 (MBConv, SiLU, SE),
ShuffleNetV2 (channel split and shuffle) and ResNeXt (grouped 3x3 bottlenecks).

Each factory takes ``size="tiny"`` (a few blocks, few channels: for the test zoo) or ``size="imagenet"`` (the
published stage layout at 224x224: for ``benchmarks/bench_efficient.py``). Their cost sits in 1x1 and grouped
convs, which the depthwise-separable form cannot take.

Example:
    >>> mobilenet_v2("tiny")(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from convslim.models.blocks import Head, SqueezeExcite, conv_bn

# (expansion t, out channels c, repeats n, stride s, kernel k, squeeze-excite)
MBV2 = {
    "imagenet": [(1, 16, 1, 1, 3, 0), (6, 24, 2, 2, 3, 0), (6, 32, 3, 2, 3, 0), (6, 64, 4, 2, 3, 0)]
    + [(6, 96, 3, 1, 3, 0), (6, 160, 3, 2, 3, 0), (6, 320, 1, 1, 3, 0)],
    "tiny": [(1, 8, 1, 1, 3, 0), (4, 16, 2, 2, 3, 0), (4, 24, 1, 2, 3, 0)],
}
MBV3 = {  # MobileNetV3-Large blocks, written as expansion ratios
    "imagenet": [(1, 16, 1, 1, 3, 0), (4, 24, 2, 2, 3, 0), (3, 40, 3, 2, 5, 1), (6, 80, 4, 2, 3, 0)]
    + [(6, 112, 2, 1, 3, 1), (6, 160, 3, 2, 5, 1)],
    "tiny": [(1, 8, 1, 1, 3, 1), (4, 16, 1, 2, 3, 0), (3, 16, 1, 1, 5, 1)],
}
EFFB0 = {
    "imagenet": [(1, 16, 1, 1, 3, 1), (6, 24, 2, 2, 3, 1), (6, 40, 2, 2, 5, 1), (6, 80, 3, 2, 3, 1)]
    + [(6, 112, 3, 1, 5, 1), (6, 192, 4, 2, 5, 1), (6, 320, 1, 1, 3, 1)],
    "tiny": [(1, 8, 1, 1, 3, 1), (6, 16, 1, 2, 3, 1), (6, 24, 1, 2, 5, 1)],
}
STEM = {"imagenet": (32, 1280, 1000), "tiny": (8, 32, 10)}  # stem width, head width, classes


class BlockSpec(NamedTuple):
    """An inverted residual's shape beyond its channels and stride: expansion, kernel, squeeze-excite, activation."""

    expand: int
    k: int
    se: bool
    act: type


class InvertedResidual(nn.Module):
    """1x1 expand → depthwise KxK → (SE) → 1x1 project, with a residual when shapes allow (MobileNetV2/V3,
    EfficientNet's MBConv)."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec):
        super().__init__()
        expand, k, se, act = spec
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden, 1, act=act) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, k, stride, groups=hidden, act=act)
        gate = nn.Hardsigmoid if act is nn.Hardswish else nn.Sigmoid
        squeeze = nn.ReLU if act is nn.Hardswish else act
        self.se = SqueezeExcite(hidden, max(8, cin // 4), squeeze, gate) if se else nn.Identity()
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class MobileNet(nn.Module):
    """Stem 3x3/2 → inverted residual stages → 1x1 head conv → pool → fc."""

    def __init__(self, blocks, size: str, act):
        super().__init__()
        stem, head, classes = STEM[size]
        layers, cin = [conv_bn(3, stem, stride=2, act=act)], stem
        for t, c, n, s, k, se in blocks:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, BlockSpec(t, k, se, act)))
                cin = c
        layers.append(conv_bn(cin, head, 1, act=act))
        self.features = nn.Sequential(*layers)
        self.head = Head(head, classes)

    def forward(self, x):
        return self.head(self.features(x))


def mobilenet_v2(size: str = "imagenet") -> MobileNet:
    return MobileNet(MBV2[size], size, nn.ReLU6)


def mobilenet_v3(size: str = "imagenet") -> MobileNet:
    return MobileNet(MBV3[size], size, nn.Hardswish)


def efficientnet_b0(size: str = "imagenet") -> MobileNet:
    return MobileNet(EFFB0[size], size, nn.SiLU)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels and transforms one half; stride 2 transforms both."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.stride = stride
        self.branch = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )
        if stride == 2:
            self.shortcut = nn.Sequential(
                conv_bn(cin, cin, 3, 2, groups=cin, act=None), conv_bn(cin, half, 1)
            )

    def forward(self, x):
        if self.stride == 1:
            keep, x = x.chunk(2, dim=1)
        else:
            keep = self.shortcut(x)
        return channel_shuffle(torch.cat([keep, self.branch(x)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    LAYOUT = {"imagenet": ([24, 116, 232, 464, 1024], [4, 8, 4], 1000), "tiny": ([8, 16, 32, 48], [2, 1], 10)}

    def __init__(self, size: str = "imagenet"):
        super().__init__()
        widths, repeats, classes = self.LAYOUT[size]
        layers = [conv_bn(3, widths[0], stride=2)]
        if size == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        cin = widths[0]
        for cout, n in zip(widths[1:-1], repeats, strict=True):
            layers += [ShuffleUnit(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(n)]
            cin = cout
        layers.append(conv_bn(cin, widths[-1], 1))
        self.features = nn.Sequential(*layers)
        self.head = Head(widths[-1], classes)

    def forward(self, x):
        return self.head(self.features(x))


class ResNeXtBlock(nn.Module):
    """1x1 reduce → grouped 3x3 (cardinality g) → 1x1 expand, with a projection shortcut when shapes change."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, width, 1),
            conv_bn(width, width, 3, stride, groups=groups),
            conv_bn(width, cout, 1, act=None),
        )
        self.proj = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.proj(x) + self.body(x))


class ResNeXt(nn.Module):
    """ResNeXt-50 32x4d layout (``imagenet``) or two small stages with cardinality 4 (``tiny``)."""

    LAYOUT = {"imagenet": (64, [3, 4, 6, 3], 32, 4, 1000), "tiny": (16, [1, 1], 4, 4, 10)}

    def __init__(self, size: str = "imagenet"):
        super().__init__()
        stem, repeats, groups, group_width, classes = self.LAYOUT[size]
        layers = [conv_bn(3, stem, 7 if size == "imagenet" else 3, 2)]
        if size == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        cin, planes = stem, stem
        for i, n in enumerate(repeats):
            width, cout = groups * group_width * 2**i, planes * 4 * 2**i
            for j in range(n):
                layers.append(ResNeXtBlock(cin, width, cout, 2 if j == 0 and i > 0 else 1, groups))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = Head(cin, classes)

    def forward(self, x):
        return self.head(self.features(x))


MOBILE_ZOO = {
    "mobilenet_v2": (lambda: mobilenet_v2("tiny"), (1, 3, 32, 32)),
    "mobilenet_v3": (lambda: mobilenet_v3("tiny"), (1, 3, 32, 32)),
    "efficientnet": (lambda: efficientnet_b0("tiny"), (1, 3, 32, 32)),
    "shufflenet_v2": (lambda: ShuffleNetV2("tiny"), (1, 3, 32, 32)),
    "resnext": (lambda: ResNeXt("tiny"), (1, 3, 32, 32)),
}
IMAGENET = {
    "mobilenet_v2": lambda: mobilenet_v2("imagenet"),
    "efficientnet_b0": lambda: efficientnet_b0("imagenet"),
    "resnext50": lambda: ResNeXt("imagenet"),
}
