r"""The teacher as stage 2 runs it: frozen, without gradients, and in bfloat16 where the CPU computes it natively.

Stage 2 runs the original twice per phase-A step (the view, with hooks for the block targets, and its mirror
image for the replayed target, ``replay``) and on every phase-B step it cannot replay. Its outputs are targets,
not weights being trained, so they need not carry float32's 24-bit mantissa: under bfloat16 autocast (8 bits)
ResNet-20's logits on 1,024 val5k images differ from float32's by 0.74 % (relative L2) and agree on 99.9 % of
their top-1. On a CPU with native bfloat16 arithmetic it cuts the teacher's time to 0.43×: ResNet-20, batch 128,
channels-last, 2 threads, an AMD EPYC (Zen 5): 25.6 against 59.4 ms per forward (medians of 8 alternating
blocks), and stage 2 on the ×2 plan trains 0.95× as many images per second as plain training of the original
instead of 0.87× (``bench_finetune.py --profile``). Without such arithmetic bfloat16 is emulated (not measured
here), so ``auto`` takes it only where the CPU's flags name it.

``teacher_precision``: ``"auto"`` → bfloat16 on a CPU whose flags name bfloat16 arithmetic (``avx512_bf16``,
``amx_bf16``), else float32 (GPUs included: not measured); ``"bf16"`` / ``"fp32"`` force it. Every output and
every hooked activation is handed on as float32 (``full_precision``). Stage 1's least squares and the scores
keep the float32 original: they are exact fits and the figures users compare.

``student_precision`` (the same choices, default ``"fp32"``) autocasts the student's stage-2 forwards
(``loop.student_forward``); on an AMX Xeon it trained 0.838x plain training's images per second against 0.897x
in float32, and 89.64 against 89.74 % at 2,000 equal steps (README), so float32 stays the default.

Example:
    >>> teacher = StageTeacher(original, autocast_dtype("auto", torch.device("cpu")))
    >>> logits = teacher(x)                          # float32, computed in bfloat16 where that pays
    >>> teacher.get_submodule("layer1.0.conv1")      # the original's own module, to hook
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from convslim.core.machine import cpu_flags

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_LOW = (torch.bfloat16, torch.float16)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype stage-2 forwards autocast to (None: the model's own), for ``teacher_precision`` or
    ``student_precision``."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cpu" and cpu_flags() & NATIVE_BF16_FLAGS:
        return torch.bfloat16
    return None


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 when autocast left it in a 16-bit float; any other tensor as it is (no copy)."""
    return t.float() if t.dtype in _LOW else t


def full_outputs(out):
    """``out`` (a tensor, or tuples, lists and dicts of them) with every 16-bit float tensor as float32."""
    if isinstance(out, torch.Tensor):
        return full_precision(out)
    if isinstance(out, (tuple, list)):
        return type(out)(full_outputs(o) for o in out)
    if isinstance(out, dict):
        return {k: full_outputs(v) for k, v in out.items()}
    return out


class StageTeacher:
    """A frozen original called as stage 2 calls it (see the module docstring); hooks go on ``get_submodule``."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None):
        self.module, self.dtype = module, dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(x.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return full_outputs(self.module(x))

    def get_submodule(self, name: str) -> nn.Module:
        return self.module.get_submodule(name)

    def describe(self) -> str:
        return precision_name(self.dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """How a stage-2 forward computes, for the report: "bfloat16 autocast", or "float32" (the model's own)."""
    return "bfloat16 autocast" if dtype == torch.bfloat16 else str(dtype or "float32")
