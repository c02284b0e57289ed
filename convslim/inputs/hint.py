"""Which input size a model accepts, for the error message when it does not run on the one given.

Many models only run at one resolution: a classifier whose fc takes a flattened fixed-size map, a segmentation
net with fixed-size pooling. When the first try fails we look for a size the model declares (an attribute
``input_size``/``input_shape``/``image_size``/``img_size``, pytorchcv's ``in_size``, or timm's ``default_cfg``/``pretrained_cfg``
``["input_size"]``) and check it; without one, we try a few common square sizes (a bounded number of forward
passes at batch 1) and name the first that runs.

Example:
    >>> input_size_hint(FixedSize(), (torch.randn(1, 3, 64, 64),))
    ' The model declares input_size (3, 32, 32): try --input-shape 1,3,32,32'
"""

from __future__ import annotations

import time

import torch
from torch import nn

SIZE_ATTRS = ("input_size", "input_shape", "image_size", "img_size", "in_size")  # in_size: pytorchcv
CONFIG_ATTRS = ("default_cfg", "pretrained_cfg")
COMMON_SIDES = (32, 64, 96, 112, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)
PROBE_SECONDS = 10.0


def declared_input_size(model: nn.Module) -> tuple[tuple[int, ...], str] | None:
    """(C, H, W) or (H, W) the model says it takes, and where it says so; None when it says nothing."""
    for attr in SIZE_ATTRS:
        size = _as_size(getattr(model, attr, None))
        if size:
            return size, attr
    for attr in CONFIG_ATTRS:
        config = getattr(model, attr, None)
        size = _as_size(config.get("input_size")) if isinstance(config, dict) else None
        if size:
            return size, f"{attr}['input_size']"
    return None


def _as_size(value) -> tuple[int, ...] | None:
    if isinstance(value, int) and value > 0:
        return (value, value)
    is_sequence = isinstance(value, (tuple, list, torch.Size)) and len(value) in (2, 3, 4)
    if is_sequence and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)[-3:] if len(value) == 4 else tuple(value)
    return None


def _shape_for(size: tuple[int, ...], example: torch.Tensor) -> tuple[int, ...]:
    channels = size[0] if len(size) == 3 else example.shape[1]
    return (1, channels, *size[-2:])


@torch.no_grad()
def _runs(model: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> bool:
    try:
        model(torch.zeros(shape, dtype=like.dtype, device=like.device))
    except Exception:  # noqa: BLE001  (any failure means: not this size)
        return False
    return True


def input_size_hint(model: nn.Module, example_inputs: tuple) -> str:
    """A sentence naming an input shape the model runs on, or "" when none is declared or found."""
    tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
    if len(tensors) != 1 or tensors[0].dim() != 4:
        return ""
    example = tensors[0]
    declared = declared_input_size(model)
    if declared is not None:
        size, where = declared
        shape = _shape_for(size, example)
        if _runs(model, shape, example):
            return f" The model declares {where} {size}: try --input-shape {','.join(map(str, shape))}"
    start = time.perf_counter()
    for side in COMMON_SIDES:
        if time.perf_counter() - start > PROBE_SECONDS:
            break
        shape = (1, example.shape[1], side, side)
        if shape[2:] != tuple(example.shape[2:]) and _runs(model, shape, example):
            return f" It runs at {side}x{side}: try --input-shape {','.join(map(str, shape))}"
    return ""
