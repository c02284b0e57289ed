"""Cancel octave merge → (elementwise / channel-wise ops) → split chains.

Walking the graph in order, every merged value y = merge(Y_H, Y_L) is tracked as its pair (Y_H, Y_L). An op that
commutes with split/merge (see ``octave_ops``) on tracked values is *lifted*: it is applied to H and L apart
and its result is tracked too. A split of a tracked value with the same channel sets is replaced by the pair —
exact, because avgpool₂(up(Y_L)) = Y_L. A residual add of a tracked value and a plain tensor (the
pad shortcut's output) is not lifted: split(relu(up(Y_L) + z)) ≠ relu(Y_L + split(z)). Consumers that need the full tensor (pad shortcut, global pool,
flatten, a non-octave conv, the output) get one merge placed just before them; the old chain dies (DCE).

Example:
    >>> cancelled, stats = cancel_octave(expand_octave(gm))
    >>> stats.summary()
    '16 merge/split pair(s) cancelled, 5 merge(s) kept (add x2, global pool x1, pad shortcut x2)'
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from torch import fx, nn

from convslim.convert.octave_conv import octave_merge, octave_split_high, octave_split_low
from convslim.passes.octave_ops import describe_consumer, op_kind, shape_of


@dataclass(frozen=True)
class Pair:
    """A merged value tracked as its (high, low) parts, with the get_attr nodes of its channel sets."""

    high: fx.Node
    low: fx.Node
    high_index: fx.Node
    low_index: fx.Node
    inverse: fx.Node
    key: tuple


@dataclass
class CancelStats:
    cancelled: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        why = ", ".join(f"{reason} x{count}" for reason, count in sorted(self.reasons.items()))
        kept = f"{self.kept} merge(s) kept" + (f" ({why})" if why else "")
        return f"{self.cancelled} merge/split pair(s) cancelled, {kept}"


def cancel_octave(gm: fx.GraphModule) -> tuple[fx.GraphModule, CancelStats]:
    """Return a cancelled copy of an expanded graph and what was done."""
    gm = copy.deepcopy(gm)
    return gm, cancel_octave_(gm)


def cancel_octave_(gm: fx.GraphModule) -> CancelStats:
    stats = CancelStats()
    modules = dict(gm.named_modules())
    pairs: dict[fx.Node, Pair] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is octave_merge:
            pairs[node] = Pair(*node.args, key=_key(gm, node.args[2], node.args[3]))
        elif node.op == "call_function" and node.target in (octave_split_high, octave_split_low):
            _cancel_split(gm, node, pairs, stats)
        else:
            lifted = _lift(gm, node, pairs, modules, stats)
            if lifted is not None:
                pairs[node] = lifted
    _materialize(gm, pairs)
    gm.graph.eliminate_dead_code()
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is octave_merge:
            stats.kept += 1
            stats.reasons.update({describe_consumer(user, modules) for user in node.users})
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return stats


def _cancel_split(gm: fx.GraphModule, node: fx.Node, pairs: dict, stats: CancelStats) -> None:
    pair = pairs.get(node.args[0])
    high = node.target is octave_split_high
    if pair is None or _tensor(gm, node.args[1]).tolist() != list(pair.key[0 if high else 1]):
        return
    node.replace_all_uses_with(pair.high if high else pair.low)
    gm.graph.erase_node(node)
    stats.cancelled += 0 if high else 1  # one split = one high + one low node; count it once


def _lift(gm: fx.GraphModule, node: fx.Node, pairs: dict, modules: dict, stats: CancelStats) -> Pair | None:
    kind = op_kind(node, modules)
    if kind in ("unary", "batchnorm"):
        pair = pairs.get(node.args[0])
        if pair is None or any(a is True for a in node.args[1:]):  # a positional inplace=True: leave it
            return None
        return (
            _lift_unary(gm, node, pair, modules)
            if kind == "unary"
            else _lift_batchnorm(gm, node, pair, modules)
        )
    if kind == "binary":
        return _lift_binary(gm, node, pairs)
    if kind == "cat":
        return _lift_cat(gm, node, pairs)
    return None


def _lift_unary(gm: fx.GraphModule, node: fx.Node, pair: Pair, modules: dict) -> Pair:
    target, kwargs = node.target, dict(node.kwargs)
    if "inplace" in kwargs:
        kwargs["inplace"] = False  # H and L may feed other ops: never overwrite them
    if node.op == "call_module" and getattr(modules[target], "inplace", False):
        copy_ = copy.deepcopy(modules[target])
        copy_.inplace = False
        target = _add_module(gm, f"{target}_octave", copy_)
    rest = node.args[1:]
    with gm.graph.inserting_before(node.next):
        high = gm.graph.create_node(node.op, target, (pair.high, *rest), kwargs)
        low = gm.graph.create_node(node.op, target, (pair.low, *rest), kwargs)
    return replace(pair, high=high, low=low)


def _lift_batchnorm(gm: fx.GraphModule, node: fx.Node, pair: Pair, modules: dict) -> Pair:
    bn = modules[node.target]
    parts = []
    for suffix, index in (("high", pair.key[0]), ("low", pair.key[1])):
        parts.append(_add_module(gm, f"{node.target}_octave_{suffix}", _sub_batchnorm(bn, list(index))))
    with gm.graph.inserting_before(node.next):
        high = gm.graph.call_module(parts[0], (pair.high,))
        low = gm.graph.call_module(parts[1], (pair.low,))
    return replace(pair, high=high, low=low)


@torch.no_grad()
def _sub_batchnorm(bn: nn.BatchNorm2d, index: list[int]) -> nn.BatchNorm2d:
    sub = nn.BatchNorm2d(len(index), eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    sub = sub.to(bn.running_mean.device, bn.running_mean.dtype).eval()
    idx = torch.as_tensor(index, dtype=torch.long)
    sub.running_mean.copy_(bn.running_mean[idx])
    sub.running_var.copy_(bn.running_var[idx])
    if bn.affine:
        sub.weight.copy_(bn.weight[idx])
        sub.bias.copy_(bn.bias[idx])
    return sub


def _lift_binary(gm: fx.GraphModule, node: fx.Node, pairs: dict) -> Pair | None:
    if len(node.args) != 2:
        return None
    a, b = node.args
    pa, pb = pairs.get(a), pairs.get(b)
    pair = pa or pb
    if pair is None or (pa and pb and pa.key != pb.key):
        return None
    parts = []
    for arg, p in ((a, pa), (b, pb)):
        if p is not None:
            parts.append((p.high, p.low))
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            parts.append((arg, arg))
        else:
            # a plain tensor operand: splitting it would be exact only if nothing but splits followed
            # (relu(up(L) + z) does not pool to relu(L + pool(z))), so the merge stays
            return None
    with gm.graph.inserting_before(node.next):
        high = gm.graph.create_node(node.op, node.target, (parts[0][0], parts[1][0]), dict(node.kwargs))
        low = gm.graph.create_node(node.op, node.target, (parts[0][1], parts[1][1]), dict(node.kwargs))
    return replace(pair, high=high, low=low)


def _lift_cat(gm: fx.GraphModule, node: fx.Node, pairs: dict) -> Pair | None:
    inputs = node.args[0]
    parts = [pairs.get(x) for x in inputs]
    if not parts or any(p is None for p in parts) or any(shape_of(x) is None for x in inputs):
        return None
    high, low, offset = [], [], 0
    for x, p in zip(inputs, parts, strict=True):
        high += [offset + c for c in p.key[0]]
        low += [offset + c for c in p.key[1]]
        offset += shape_of(x)[1]
    buffers = {"high": torch.tensor(high), "low": torch.tensor(low)}
    buffers["inverse"] = torch.argsort(torch.cat([buffers["high"], buffers["low"]]))
    names = {k: _add_buffer(gm, f"{node.name}_octave_{k}", v) for k, v in buffers.items()}
    with gm.graph.inserting_before(node.next):
        attrs = {k: gm.graph.get_attr(v) for k, v in names.items()}
        h = gm.graph.call_function(torch.cat, ([p.high for p in parts], 1))
        lo = gm.graph.call_function(torch.cat, ([p.low for p in parts], 1))
    return Pair(h, lo, attrs["high"], attrs["low"], attrs["inverse"], key=(tuple(high), tuple(low)))


def _materialize(gm: fx.GraphModule, pairs: dict) -> None:
    """Give every consumer that needs a tracked value whole one merge, placed before its first such consumer."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node, pair in pairs.items():
        if node.op == "call_function" and node.target is octave_merge:
            continue
        needers = [u for u in node.users if u not in pairs]
        if not needers:
            continue
        with gm.graph.inserting_before(min(needers, key=order.__getitem__)):
            merged = gm.graph.call_function(
                octave_merge, (pair.high, pair.low, pair.high_index, pair.low_index, pair.inverse)
            )
        merged.meta = dict(node.meta)
        for user in needers:
            user.replace_input_with(node, merged)


def _key(gm: fx.GraphModule, high: fx.Node, low: fx.Node) -> tuple:
    return tuple(_tensor(gm, high).tolist()), tuple(_tensor(gm, low).tolist())


def _tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _free(gm: nn.Module, base: str) -> str:
    base = base.replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _add_module(gm: fx.GraphModule, base: str, module: nn.Module) -> str:
    name = _free(gm, base)
    gm.add_submodule(name, module)
    return name


def _add_buffer(gm: fx.GraphModule, base: str, value: torch.Tensor) -> str:
    name = _free(gm, base)
    gm.register_buffer(name, value)
    return name
