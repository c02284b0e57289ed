"""Which FX nodes commute with the octave split and merge (shared by channel assignment and cancellation).

An op commutes when applying it to the merged tensor and then splitting equals applying it to (H, L) apart:
elementwise ops do, because avgpool₂(up(L)) = L and nearest upsampling copies each value into a 2×2 block, so
f(up(L)) = up(f(L)) for any pointwise f; per-channel affine ops (eval BatchNorm) do as well, with their
parameters cut to the high and low channels; concat along channels does, with the channel sets concatenated.

Example:
    >>> op_kind(node, modules)   # 'unary', 'batchnorm', 'binary', 'cat' or None
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from convslim.convert.octave_conv import octave_split_high, octave_split_low
from convslim.core.ops import POINTWISE_FUNCTIONS, POINTWISE_METHODS, POINTWISE_MODULES

BINARY_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul}
BINARY_METHODS = {"add", "sub", "mul"}
CATS = {torch.cat, torch.concat}


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'unary', 'batchnorm', 'binary', 'cat' for ops that commute with split/merge, else None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if isinstance(module, POINTWISE_MODULES):
            return "unary"
        if isinstance(module, nn.BatchNorm2d) and not module.training and module.running_mean is not None:
            return "batchnorm"
        return None
    if node.op == "call_function":
        if node.target in POINTWISE_FUNCTIONS and _extra_args_constant(node):
            return "unary"
        if node.target in BINARY_FUNCTIONS and "alpha" not in node.kwargs:
            return "binary"
        if node.target in CATS and _cat_dim(node) == 1:
            return "cat"
        return None
    if node.op == "call_method":
        if node.target in POINTWISE_METHODS and _extra_args_constant(node):
            return "unary"
        if node.target in BINARY_METHODS and "alpha" not in node.kwargs:
            return "binary"
    return None


def _extra_args_constant(node: fx.Node) -> bool:
    rest = list(node.args[1:]) + list(node.kwargs.values())
    return bool(node.args) and not any(isinstance(a, fx.Node) for a in rest)


def _cat_dim(node: fx.Node) -> int | None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return 1 if dim in (1, -3) and isinstance(node.args[0], (list, tuple)) else None


def shape_of(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def describe_consumer(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short human name for why a merged tensor is needed here (for the report note)."""
    if node.op == "output":
        return "graph output"
    target = node.target
    if node.op == "call_module":
        module = modules.get(target)
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return "global pool"
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            return "pooling"
        if isinstance(module, nn.Conv2d):
            return "non-octave conv"
        if isinstance(module, nn.Flatten):
            return "flatten"
        return type(module).__name__
    if op_kind(node, modules) == "binary":
        return "residual add with a full-resolution operand"
    if target in (octave_split_high, octave_split_low):
        return "split with another channel assignment"
    if target in (operator.getitem, F.pad, torch.constant_pad_nd):
        return "pad shortcut"
    if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) or target == "mean":
        return "global pool"
    if target in (torch.flatten, "flatten", "view", "reshape"):
        return "flatten"
    return getattr(target, "__name__", str(target))
