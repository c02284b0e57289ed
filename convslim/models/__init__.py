"""Model definitions used by the examples, tests and benchmarks (no torchvision here)."""

from convslim.models.cifar_resnet import CifarResNet, load_cifar_resnet, resnet20, resnet32, resnet56
from convslim.models.imagenet_resnet import ImageNetResNet, resnet18, resnet50

__all__ = [
    "CifarResNet",
    "ImageNetResNet",
    "load_cifar_resnet",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet50",
    "resnet56",
]
