"""Model definitions used by the examples, tests and benchmarks (no torchvision here)."""

from convslim.models.cifar_resnet import CifarResNet, load_cifar_resnet, resnet20, resnet32, resnet56

__all__ = ["CifarResNet", "load_cifar_resnet", "resnet20", "resnet32", "resnet56"]
