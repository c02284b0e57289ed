"""``--runtime cpu``: the exported fp32 model on ONNX Runtime's CPU execution provider (the default)."""

from convslim.runtime.targets.base import Target
from convslim.runtime.targets.registry import register_target


class Cpu(Target):
    name = "cpu"
    providers = ("CPUExecutionProvider",)
    description = "fp32 on ONNX Runtime's CPU execution provider"


register_target(Cpu())
