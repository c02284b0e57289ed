"""One low-frequency channel assignment per group of coupled channels, so merge/split pairs can cancel.

A merge of conv A and a split of conv B cancel only when A's low output channels equal B's low input channels.
Values joined by ops that commute with split/merge (ReLU, BN, residual add of equal shapes, identity) share
their channels, so a union-find over those edges gives the "channel spaces". Each space picks the ⌊α·C⌉
channels with the least summed pool loss (the per-conv losses in the settings, each conv normalised to sum 1);
a concat's space takes its inputs' assignments side by side (channel i of input k sits at offset + i); the
network input (an image) keeps every channel at full resolution. Wrappers whose sets change are rebuilt from
their exact dense conv; the final sets are returned per conv (the caller records them as ``low_in``/``low_out``
in a new plan; the decisions given are only read).

Example:
    >>> sets = assign_channels_(gm, plan.rewritten)   # gm in place; {"layer1.0.conv1": (low_in, low_out), ...}
"""

from __future__ import annotations

from torch import fx

from convslim.convert.octave_conv import OctaveConv2d, convert_octave, lowest, n_low
from convslim.core import set_submodule
from convslim.passes.octave_ops import op_kind, shape_of


class UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] is not x:
            self.parent[x] = self.parent[self.parent[x]]  # path halving keeps lookups near O(1)
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra


def channel_spaces(gm: fx.GraphModule) -> UnionFind:
    """Union every value with the inputs of the same shape of the commuting op that produced it."""
    modules = dict(gm.named_modules())
    spaces = UnionFind()
    for node in gm.graph.nodes:
        kind = op_kind(node, modules)
        if kind in ("unary", "batchnorm"):
            spaces.union(node.args[0], node)
        elif kind == "binary":
            for arg in node.args:
                if isinstance(arg, fx.Node) and shape_of(arg) == shape_of(node) is not None:
                    spaces.union(arg, node)
    return spaces


def wrapper_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    modules = dict(gm.named_modules())
    return [
        n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), OctaveConv2d)
    ]


class _Assigner:
    def __init__(self, gm: fx.GraphModule, decisions: list):
        self.gm = gm
        self.spaces = channel_spaces(gm)
        self.settings = {d.name: d.setting for d in decisions}
        self.default_alpha = next((d.setting.get("alpha", 0.5) for d in decisions), 0.5)
        self.loss: dict = {}
        self.alpha: dict = {}
        self.members: dict = {}
        for node in gm.graph.nodes:
            self.members.setdefault(self.spaces.find(node), []).append(node)
        for node in wrapper_nodes(gm):
            setting = self.settings.get(node.target, {})
            self._add(node.args[0], setting.get("in_loss"), setting)
            self._add(node, setting.get("out_loss"), setting)
        self.memo: dict = {}

    def _add(self, value: fx.Node, losses: list[float] | None, setting: dict) -> None:
        root = self.spaces.find(value)
        self.alpha.setdefault(root, setting.get("alpha", self.default_alpha))
        if not losses:
            return
        total = sum(losses) or 1.0
        acc = self.loss.setdefault(root, [0.0] * len(losses))
        if len(acc) == len(losses):
            self.loss[root] = [a + v / total for a, v in zip(acc, losses, strict=True)]

    def low(self, value: fx.Node, channels: int) -> list[int]:
        root = self.spaces.find(value)
        if root in self.memo:
            return self.memo[root] if self.memo[root] is not None else []
        self.memo[root] = None  # guards against cycles through concat
        members = self.members.get(root, [value])
        if any(m.op == "placeholder" for m in members):
            chosen: list[int] = []  # the network input is an image, not a feature map
        else:
            chosen = self._from_cat(members)
            if chosen is None:
                alpha = self.alpha.get(root, self.default_alpha)
                chosen = lowest(self.loss.get(root) or [0.0] * channels, n_low(channels, alpha))
        self.memo[root] = chosen
        return chosen

    def _from_cat(self, members: list[fx.Node]) -> list[int] | None:
        modules = dict(self.gm.named_modules())
        for node in members:
            if op_kind(node, modules) != "cat" or not all(isinstance(a, fx.Node) for a in node.args[0]):
                continue
            chosen, offset = [], 0
            for part in node.args[0]:
                shape = shape_of(part)
                if shape is None:
                    return None
                chosen += [offset + c for c in self.low(part, shape[1])]
                offset += shape[1]
            return chosen
        return None


def assign_channels_(gm: fx.GraphModule, decisions: list) -> dict[str, tuple[list[int], list[int]]]:
    """In place on ``gm``: pick coupled low sets and rebuild the wrappers that change; returns each planned
    conv's (low_in, low_out). Empty when the decisions already fix every set (a saved plan)."""
    sets: dict[str, tuple[list[int], list[int]]] = {}
    if decisions and all("low_in" in d.setting and "low_out" in d.setting for d in decisions):
        return sets  # a saved plan already fixes the sets; rebuild exactly what it says
    assigner = _Assigner(gm, decisions)
    planned = {d.name for d in decisions}
    done: set[str] = set()
    for node in wrapper_nodes(gm):
        if node.target in done:
            continue  # a conv called twice keeps the sets of its first call
        done.add(node.target)
        wrapper = gm.get_submodule(node.target)
        conv = wrapper.to_conv()
        low_in = assigner.low(node.args[0], conv.in_channels)
        low_out = assigner.low(node, conv.out_channels)
        if low_in != wrapper.low_in.tolist() or low_out != wrapper.low_out.tolist():
            set_submodule(gm, node.target, convert_octave(conv, low_in, low_out))
        if node.target in planned:
            sets[node.target] = (low_in, low_out)
    return sets


def octave_macs(weight_shape: list[int], low_in: list[int], low_out: list[int], dense_macs: int) -> int:
    """MACs of the octave conv given the dense conv's MACs (same output pixels)."""
    c_out, c_in = weight_shape[:2]
    hi_in, hi_out, lo_in, lo_out = c_in - len(low_in), c_out - len(low_out), len(low_in), len(low_out)
    quarter_terms = hi_in * lo_out + lo_in * hi_out + lo_in * lo_out
    return dense_macs * (4 * hi_in * hi_out + quarter_terms) // (4 * c_in * c_out)
