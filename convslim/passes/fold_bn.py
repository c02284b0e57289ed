r"""Fold eval-mode BatchNorm into the conv that feeds it.

For y = BN(conv(x)) with running mean μ, variance σ², eps ε, scale γ and shift β, per output channel m:

    W'_m = W_m · γ_m / √(σ²_m + ε),     b'_m = (b_m − μ_m) · γ_m / √(σ²_m + ε) + β_m

which is exact. The fold happens only when the conv's output feeds that BN and nothing else, the conv module is
called once and the BN tracks running statistics (otherwise BN uses batch statistics and cannot be folded).

Example:
    >>> folded = fold_batchnorm(trace_model(model, inputs).graph_module)
    >>> any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    False
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn

from convslim.core import delete_submodule

BATCHNORMS = (nn.BatchNorm2d,)


def fold_batchnorm(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """Return a copy of ``gm`` with every foldable conv→BN pair fused, and how many were folded."""
    gm = copy.deepcopy(gm)
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, BATCHNORMS) or not bn.track_running_stats or bn.running_mean is None:
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or producer.op != "call_module":
            continue
        conv = modules[producer.target]
        if type(conv) is not nn.Conv2d or len(producer.users) != 1:
            continue
        if calls[producer.target] != 1 or calls[node.target] != 1:
            continue
        fuse_conv_bn_(conv, bn)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        delete_submodule(gm, node.target)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    return gm, folded


@torch.no_grad()
def fuse_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """In place: absorb ``bn`` (eval statistics) into ``conv``'s weight and bias."""
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(inv_std)
    scale = gamma * inv_std
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv_std)
    new_bias = (bias - bn.running_mean.double()) * scale + beta
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))
