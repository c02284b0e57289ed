"""``--runtime cpu``: the exported fp32 model on ONNX Runtime's CPU execution provider (the default)."""

from convslim.runtime.targets import register_target
from convslim.runtime.targets.base import Target


class Cpu(Target):
    name = "cpu"
    providers = ("CPUExecutionProvider",)
    description = "fp32 on ONNX Runtime's CPU execution provider"


register_target(Cpu())
