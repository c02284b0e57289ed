"""Which FX nodes are point-wise (each output value depends on the input value at the same place only): the one
table the graph passes share. A point-wise op commutes with any channel permutation (``passes/permute.py``)
and with octave's split/merge, since f(up(L)) = up(f(L)) for nearest upsampling (``passes/octave_ops.py``);
each pass adds the ops only it may move across (pooling for permutations, BatchNorm and concat for octave).

Example:
    >>> is_pointwise(node, dict(gm.named_modules()))   # True for relu, F.silu, x.sigmoid(), nn.Identity, ...
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Mish,
    nn.Identity,
    nn.Dropout,  # graphs are traced in eval mode, where dropout is the identity
)
POINTWISE_FUNCTIONS = frozenset(
    {
        F.relu,
        torch.relu,
        F.relu6,
        F.leaky_relu,
        F.elu,
        F.gelu,
        F.silu,
        torch.sigmoid,
        F.sigmoid,
        torch.tanh,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        F.mish,
    }
)
POINTWISE_METHODS = frozenset({"relu", "sigmoid", "tanh", "contiguous"})


def is_pointwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` applies one of the tables' point-wise ops (its extra arguments are not checked)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), POINTWISE_MODULES)
    if node.op == "call_function":
        return node.target in POINTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in POINTWISE_METHODS
