"""``--runtime cuda``: the exported fp32 model on ONNX Runtime's CUDA execution provider (onnxruntime-gpu)."""

import torch

from convslim.runtime.targets.base import Target
from convslim.runtime.targets.registry import register_target


class Cuda(Target):
    name = "cuda"
    providers = ("CUDAExecutionProvider",)
    description = "fp32 on ONNX Runtime's CUDA execution provider"

    def unavailable(self) -> str | None:
        reason = super().unavailable()
        if reason:
            return f"onnxruntime-gpu is not installed: {reason}"
        if not torch.cuda.is_available():
            return "no CUDA GPU visible"
        return None


register_target(Cuda())
