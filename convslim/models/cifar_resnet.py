"""CIFAR-10 ResNets of He et al. 2016 with option-A (pad-and-subsample) shortcuts.

Layout: conv3x3(3→16)+BN+ReLU; three stages of n BasicBlocks at 16/32/64 channels (stride 2 at the
first block of stages 2 and 3); global average pool; ``linear`` 64→10. Depth = 6n + 2, so
``resnet20`` has n = 3, ``resnet32`` n = 5, ``resnet56`` n = 9. Key names match the widely used
checkpoints (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``).

Example:
    >>> model = resnet20()
    >>> model(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channel dimension (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_pad = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes) if needs_pad else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if (stage > 1 and i == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(5, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)


def load_cifar_resnet(path: str | Path) -> CifarResNet:
    """Build the right depth for a checkpoint and load it (``{"state_dict": ...}``, ``module.`` prefixes)."""
    from convslim.inputs.loading import (
        load_state_dict,  # models stay importable without the loading machinery
    )

    state = load_state_dict(path)
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layer1."))
    model = CifarResNet(blocks)
    model.load_state_dict(state)
    return model.eval()
