"""``--runtime tensorrt``: the exported model on ONNX Runtime's TensorRT execution provider, falling back to
CUDA for nodes TensorRT does not take. Present only where onnxruntime-gpu was built with TensorRT."""

import torch

from convslim.runtime.targets.base import Target
from convslim.runtime.targets.registry import register_target


class TensorRT(Target):
    name = "tensorrt"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    description = "ONNX Runtime's TensorRT execution provider (CUDA for the rest)"

    def unavailable(self) -> str | None:
        reason = super().unavailable()
        if reason:
            return f"onnxruntime was not built with TensorRT: {reason}"
        if not torch.cuda.is_available():
            return "no CUDA GPU visible"
        return None


register_target(TensorRT())
