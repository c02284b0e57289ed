"""ImageNet-shaped ResNet-18 and ResNet-50 layouts (He et al. 2016), for speed measurements at 224×224.

Only the layout matters here (weights are random): stem conv7x7/2 + BN + ReLU + maxpool3x3/2, four stages
(64, 128, 256, 512 planes; BasicBlock ×[2,2,2,2] or Bottleneck ×[3,4,6,3] with expansion 4), 1x1-conv + BN
projection shortcuts, global average pool, fc.

Example:
    >>> resnet50()(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, planes * 4, 1)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes * 4, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 64, 7, 2)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 1 and j == 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # non-trivial BN statistics so folding is exercised
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes)
