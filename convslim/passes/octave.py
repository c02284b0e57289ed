"""Octave region form: per-conv split → octave conv → merge as explicit FX nodes, then cancellation.

Pass 1 (``expand_octave``) rewrites each ``OctaveConv2d`` call into graph nodes:

    x_H = octave_split_high(x, h_in)            x_L = octave_split_low(x, l_in)        # gather, avgpool₂
    Y_H = hh(x_H) + octave_upsample(lh(x_L))    Y_L = hl(avg_pool2d(x_H, 2)) + ll(x_L)
    y   = octave_merge(Y_H, Y_L, h_out, l_out, inverse)                               # concat, up, gather

(a conv with no low inputs reads x directly; one with no low outputs returns Y_H directly). Pass 2
(``cancel_octave``, in ``octave_cancel.py``) replaces merge → commuting ops → split chains by the ops applied
to (Y_H, Y_L); merges stay only where a consumer needs the full tensor. Both passes are exact.

``octave_region`` is the graph pass ``OctaveForm`` names (``graph_pass``): channel assignment, expansion, cancellation, note.

Example:
    >>> expanded = expand_octave(gm)            # same outputs as gm, explicit split/merge nodes
    >>> cancelled, stats = cancel_octave(expanded)
    >>> stats.cancelled, stats.kept
"""

from __future__ import annotations

import copy
import operator
from dataclasses import replace

import torch.nn.functional as F
from torch import fx

from convslim.convert.octave_conv import (
    OctaveConv2d,
    octave_merge,
    octave_split_high,
    octave_split_low,
    octave_upsample,
)
from convslim.core import LayerDecision
from convslim.passes.octave_cancel import CancelStats, cancel_octave, cancel_octave_
from convslim.passes.octave_channels import assign_channels_, octave_macs, wrapper_nodes


def expand_octave(gm: fx.GraphModule) -> fx.GraphModule:
    """Return a copy of ``gm`` with every OctaveConv2d call written out as split/conv/merge nodes."""
    gm = copy.deepcopy(gm)
    expand_octave_(gm)
    return gm


def expand_octave_(gm: fx.GraphModule) -> int:
    """In place; returns how many wrapper calls were expanded."""
    nodes = wrapper_nodes(gm)
    for node in nodes:
        with gm.graph.inserting_before(node):
            merged = _emit(gm.graph, node.target, gm.get_submodule(node.target), node.args[0])
        merged.meta = dict(node.meta)  # keeps the shape the rest of the graph saw
        node.replace_all_uses_with(merged)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return len(nodes)


def _emit(graph: fx.Graph, name: str, wrapper: OctaveConv2d, x: fx.Node) -> fx.Node:
    def attr(buffer: str) -> fx.Node:
        return graph.get_attr(f"{name}.{buffer}")

    def conv(part: str, arg: fx.Node) -> fx.Node:
        return graph.call_module(f"{name}.{part}", (arg,))

    has_low_in = len(wrapper.low_in) > 0
    xh = graph.call_function(octave_split_high, (x, attr("high_in"))) if has_low_in else x
    xl = graph.call_function(octave_split_low, (x, attr("low_in"))) if has_low_in else None
    yh = conv("hh", xh)
    if wrapper.lh is not None:
        yh = graph.call_function(operator.add, (yh, graph.call_function(octave_upsample, (conv("lh", xl),))))
    if wrapper.hl is None:
        return yh
    yl = conv("hl", graph.call_function(F.avg_pool2d, (xh, 2)))
    if wrapper.ll is not None:
        yl = graph.call_function(operator.add, (yl, conv("ll", xl)))
    args = (yh, yl, attr("high_out"), attr("low_out"), attr("inverse_out"))
    return graph.call_function(octave_merge, args)


def octave_region(
    gm: fx.GraphModule, decisions: list[LayerDecision], notes: list[str]
) -> tuple[fx.GraphModule, list[LayerDecision]]:
    """Copy of ``gm`` in the region form (or the wrapper form when a setting says ``region: false``), and the
    decisions with the channel sets as built in their settings (new objects; ``decisions`` is left alone)."""
    gm = copy.deepcopy(gm)
    if not all(d.setting.get("region", True) for d in decisions):
        notes.append("octave: per-conv wrapper form (region form off): every octave conv splits and merges")
        # record the wrappers' own sets so the saved plan rebuilds them exactly
        return gm, [_with_sets(d, gm.get_submodule(d.name)) for d in decisions]
    sets = assign_channels_(gm, decisions)
    expand_octave_(gm)
    stats = cancel_octave_(gm)
    notes.append(f"octave: {stats.summary()}")
    return gm, [_with_sets(d, None, *sets[d.name]) if d.name in sets else d for d in decisions]


def _with_sets(
    decision: LayerDecision, wrapper: OctaveConv2d | None, low_in=None, low_out=None
) -> LayerDecision:
    """``decision`` with ``low_in``/``low_out`` in its setting: a wrapper's own sets, or the assigned ones (which
    also change its MACs)."""
    if wrapper is not None:
        setting = {**decision.setting, "low_in": wrapper.low_in.tolist(), "low_out": wrapper.low_out.tolist()}
        return replace(decision, setting=setting)
    macs = octave_macs(decision.weight_shape, low_in, low_out, decision.macs_before)
    return replace(
        decision, setting={**decision.setting, "low_in": low_in, "low_out": low_out}, macs_after=macs
    )


__all__ = [
    "CancelStats",
    "cancel_octave",
    "cancel_octave_",
    "expand_octave",
    "expand_octave_",
    "octave_region",
    "octave_merge",
    "octave_split_high",
    "octave_split_low",
]
