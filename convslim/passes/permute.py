r"""Fold channel permutations (gathers) of regrouped layers into their neighbours, so they cost nothing at run time.

A regrouped layer computes y = G(x[:, p_in])[:, p_out⁻¹] (see ``convslim/convert/grouped.py``). Channel
permutations commute with element-wise ops (ReLU, ...), so along a chain of them:

* input side: if x comes, through element-wise ops only used there, from a plain conv P (groups=1, called once),
  permute P's output channels, W_P ← W_P[p_in], b_P ← b_P[p_in], and drop the input gather. If x comes from
  another regrouped layer Q whose output gather was dropped, x already arrives in Q's order p_Q: pin this
  layer's input order to p_in = p_Q, and the gather is the identity.
* output side: if every consumer (through element-wise ops) is a plain conv (groups=1, called once) or a
  regrouped layer, drop the output gather; plain consumers get W_C ← W_C[:, p_out].
* anywhere else the channels are coupled (a residual add, a concat, a graph output, a layer called twice):
  policy ``consistent`` pins that side to the identity order (no gather, a less free grouping), policy
  ``gather`` keeps the explicit gather. The notes count each case and its reason.

Layers are regrouped in graph order through their ``Regroupable.regroup`` (``convslim.core.regroup``), so the
pass only moves channel orders around: the folded model equals the gathered one up to float rounding
(property-tested).

Example:
    >>> gm = fold_permutations(gm, {"layer1.0.conv1": setting}, notes)
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from convslim.core.ops import is_pointwise
from convslim.core.regroup import Regroupable

# Beyond the point-wise ops: ops that treat every channel alike (spatial pooling; dropout, which is the identity
# in eval mode whatever its arguments), so a channel permutation can be moved across them as well.
CHANNELWISE_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
CHANNELWISE_FUNCTIONS = (F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d)


def _is_elementwise(node: fx.Node, modules: dict) -> bool:
    if is_pointwise(node, modules):
        return True
    if node.op == "call_module":
        return isinstance(modules[node.target], CHANNELWISE_MODULES)
    return node.op == "call_function" and node.target in CHANNELWISE_FUNCTIONS


def _coupling(node: fx.Node) -> str:
    """A short name for why a node couples channels, for the notes."""
    if node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd):
        return "residual add"
    if node.op == "call_function" and node.target in (torch.cat, torch.concat):
        return "concat"
    if node.op == "output":
        return "model output"
    if node.op == "placeholder":
        return "model input"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"


def producer_of(node: fx.Node, modules: dict) -> tuple[fx.Node | None, bool, str]:
    """Walk back from a layer's input through element-wise ops: (producer, exclusive, reason)."""
    exclusive = len(node.users) == 1
    while node.op != "placeholder" and _is_elementwise(node, modules):
        node = node.args[0]
        exclusive = exclusive and len(node.users) == 1
    if node.op == "call_module" and isinstance(modules[node.target], nn.Module):
        return node, exclusive, "" if exclusive else "input shared with another layer"
    return None, False, _coupling(node)


def consumers_of(node: fx.Node, modules: dict) -> tuple[list[fx.Node] | None, str]:
    """Every conv that reads ``node`` through element-wise ops, or None and the op that stops it."""
    found, frontier = [], list(node.users)
    while frontier:
        user = frontier.pop()
        if _is_elementwise(user, modules):
            frontier.extend(user.users)
        elif user.op == "call_module" and _conv_like(modules[user.target]):
            found.append(user)
        else:
            return None, _coupling(user)
    return found, ""


def _conv_like(module: nn.Module) -> bool:
    return isinstance(module, Regroupable) or (type(module) is nn.Conv2d and module.groups == 1)


@torch.no_grad()
def permute_out_channels_(conv: nn.Conv2d, perm: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[perm])
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[perm])


@torch.no_grad()
def permute_in_channels_(conv: nn.Conv2d, perm: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[:, perm])


def fold_permutations(gm: nn.Module, settings: dict[str, dict], notes: list[str]):
    """Regroup every layer named in ``settings`` with its gathers folded where the graph allows (module doc)."""
    if not isinstance(gm, fx.GraphModule):
        _release_sources(gm, settings)
        notes.append("grouped: model not traced, so every permutation stays an explicit gather in its layer")
        return gm
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    raw_order: dict[
        str, torch.Tensor
    ] = {}  # layer -> channel order its output now leaves in (gather dropped)
    tally: Counter = Counter()
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in settings:
            continue
        modules = dict(gm.named_modules())
        name = node.target
        layer = modules[name]
        if not isinstance(layer, Regroupable):
            raise TypeError(f"fold_permutations: {name} is a {type(layer).__name__}, not a Regroupable layer")
        setting = settings[name]
        policy = setting.get("permute", "consistent")
        if calls[name] != 1:
            tally["gather (layer called more than once)"] += 2
            continue
        fixed_in, gather_in, fold_into = _input_side(node, modules, calls, raw_order, policy, tally)
        has_out = layer.channel_orders()[1] is not None
        fixed_out, gather_out, consumers = None, False, []
        if has_out:
            consumers, reason = consumers_of(node, modules)
            if consumers is None or any(calls[c.target] != 1 for c in consumers):
                reason = reason or "consumer called more than once"
                consumers = []
                fixed_out, gather_out = _coupled(policy, len(layer.channel_orders()[1]), reason, tally)
            else:
                tally["folded"] += 1
        new = layer.regroup(
            setting, fixed_in=fixed_in, fixed_out=fixed_out, gather_in=gather_in, gather_out=gather_out
        )
        gm.add_submodule(name, new)
        in_perm, out_perm = new.channel_orders()
        if fold_into is not None:
            permute_out_channels_(fold_into, in_perm)
        if has_out and not gather_out and fixed_out is None:
            raw_order[name] = out_perm
            for c in consumers:
                if not isinstance(modules[c.target], Regroupable):
                    permute_in_channels_(modules[c.target], out_perm)
    _release_sources(gm, settings)
    notes.append(_summary(tally))
    gm.recompile()
    return gm


def _input_side(node, modules, calls, raw_order, policy, tally):
    """(fixed_in, gather_in, plain conv to fold the input order into) for one layer."""
    producer, exclusive, reason = producer_of(node.args[0], modules)
    if producer is not None and producer.target in raw_order:
        tally["folded"] += 1
        return raw_order[producer.target], False, None
    target = _reorderable_output(modules[producer.target]) if producer is not None else None
    if target is not None and exclusive and calls[producer.target] == 1:
        tally["folded"] += 1
        return None, False, target
    reason = reason or "producer is not a plain conv"
    fixed, gather = _coupled(policy, modules[node.target].in_channels, reason, tally)
    return fixed, gather, None


def _reorderable_output(module: nn.Module) -> nn.Conv2d | None:
    """The conv whose output channels can be reordered for free: a plain conv, or what a regroupable layer offers."""
    if type(module) is nn.Conv2d and module.groups == 1:
        return module
    return module.output_conv() if isinstance(module, Regroupable) else None


def _coupled(policy: str, channels: int, reason: str, tally: Counter):
    if policy == "gather":
        tally[f"gather ({reason})"] += 1
        return None, True
    tally[f"identity order ({reason})"] += 1
    return torch.arange(channels), False


def _release_sources(gm: nn.Module, settings: dict) -> None:
    for name in settings:
        module = gm.get_submodule(name)
        if isinstance(module, Regroupable):
            module.release_source()


def _summary(tally: Counter) -> str:
    kept = [f"{n} {k}" for k, n in sorted(tally.items()) if k != "folded"]
    return f"grouped: {tally['folded']} channel permutations folded into neighbouring layers" + (
        f"; {', '.join(kept)}" if kept else ""
    )
