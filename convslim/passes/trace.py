"""Tracing: symbolic trace + shape propagation, with a module-swap fallback for models that do not trace.

``trace_model`` deep-copies the model (the user's object is never touched), puts it in eval mode, traces it
with ``torch.fx.symbolic_trace`` and runs ``ShapeProp`` so every node carries ``meta["tensor_meta"]``.
Functional ``F.conv2d`` calls whose weight is a parameter become ``nn.Conv2d`` modules so the forms can take
them; functional convs with computed weights are kept and reported as skipped.

When tracing fails (data-dependent control flow), the copy itself is used: conv leaves are swapped in place
and their shapes come from forward hooks. BN folding needs the graph, so it is not done then; the report says so.

Example:
    >>> traced = trace_model(resnet20(), (torch.randn(1, 3, 32, 32),))
    >>> traced.mode, len(collect_conv_sites(traced))
    ('fx', 19)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from convslim.convert.base import ConvSite
from convslim.errors import UsageError

FUNCTIONAL_CONVS = (F.conv2d, torch.conv2d, torch.ops.aten.conv2d.default)


@dataclass
class TracedModel:
    """The working copy of a model: an FX GraphModule (``mode='fx'``) or a plain module copy (``'module-swap'``)."""

    module: nn.Module
    example_inputs: tuple
    mode: str
    notes: list[str] = field(default_factory=list)
    unconvertible: dict[str, str] = field(default_factory=dict)  # functional convs: node name -> reason

    @property
    def graph_module(self) -> fx.GraphModule:
        if not isinstance(self.module, fx.GraphModule):
            raise TypeError("this model was not traced; it has no graph")
        return self.module


def trace_model(model: nn.Module, example_inputs: tuple) -> TracedModel:
    """Copy, trace and shape-propagate ``model``; fall back to a module copy when tracing fails."""
    work = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # noqa: BLE001  (any trace failure means: use the fallback)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        note = (
            f"torch.fx could not trace the model ({type(exc).__name__}: {reason[:160]}); "
            "fell back to swapping Conv2d modules in place, without BatchNorm folding"
        )
        _check_runs(work, example_inputs)
        return TracedModel(work, example_inputs, "module-swap", notes=[note])
    traced = TracedModel(gm, example_inputs, "fx")
    modularize_functional_convs_(traced)
    propagate_shapes_(traced)
    return traced


def propagate_shapes_(traced: TracedModel) -> None:
    """Run ShapeProp on the traced graph (in place: it only writes ``node.meta``)."""
    if traced.mode != "fx":
        return
    with torch.no_grad():
        try:
            ShapeProp(traced.graph_module).propagate(*traced.example_inputs)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(_input_mismatch_message(traced.example_inputs, exc)) from None


def _check_runs(module: nn.Module, example_inputs: tuple) -> None:
    with torch.no_grad():
        try:
            module(*example_inputs)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(_input_mismatch_message(example_inputs, exc)) from None


def _input_mismatch_message(example_inputs: tuple, exc: Exception) -> str:
    shapes = ", ".join("x".join(map(str, t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the model does not run on inputs of shape {shapes}: {first[:200]}; check --input-shape"


def modularize_functional_convs_(traced: TracedModel) -> None:
    """Turn ``F.conv2d(x, <param>, <param or None>, ...)`` nodes into ``nn.Conv2d`` call_module nodes.

    Convs whose weight is computed at run time cannot be rewritten from trained weights; they are recorded in
    ``traced.unconvertible`` with the reason, never silently ignored.
    """
    gm = traced.graph_module
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in FUNCTIONAL_CONVS:
            continue
        conv, reason = _conv_from_functional(gm, node)
        if conv is None:
            traced.unconvertible[node.name] = reason
            continue
        name = _free_name(gm, f"{node.name}_conv")
        gm.add_submodule(name, conv)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _conv_from_functional(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Conv2d | None, str]:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    args = dict(defaults, **dict(zip(names, node.args, strict=False)), **node.kwargs)
    weight, bias = args["weight"], args["bias"]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return (
            None,
            "functional conv2d whose weight is computed at run time: cannot rewrite from trained weights",
        )
    if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
        return None, "functional conv2d whose bias is computed at run time"
    w = _fetch_attr(gm, weight.target)
    out_ch, in_per_group, kh, kw = w.shape
    groups = int(args["groups"])
    conv = nn.Conv2d(
        in_per_group * groups,
        out_ch,
        (kh, kw),
        stride=args["stride"],
        padding=args["padding"],
        dilation=args["dilation"],
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias is not None:
            conv.bias.copy_(_fetch_attr(gm, bias.target))
    return conv.to(w.device, w.dtype), ""


def _fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _free_name(gm: nn.Module, base: str) -> str:
    existing = dict(gm.named_modules())
    name, i = base, 1
    while name in existing or hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def collect_conv_sites(traced: TracedModel) -> list[ConvSite]:
    """Every conv module with the shapes of each of its calls, in execution order."""
    if traced.mode == "fx":
        return _sites_from_graph(traced)
    return _sites_from_hooks(traced)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd)


def _sites_from_graph(traced: TracedModel) -> list[ConvSite]:
    gm = traced.graph_module
    modules = dict(gm.named_modules())
    sites: dict[str, ConvSite] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not _is_conv(modules[node.target]):
            continue
        site = sites.setdefault(node.target, ConvSite(node.target, modules[node.target]))
        in_meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
        out_meta = node.meta.get("tensor_meta")
        if in_meta is not None and out_meta is not None:
            site.calls.append((tuple(in_meta.shape[1:]), tuple(out_meta.shape[1:])))
    return list(sites.values())


def _sites_from_hooks(traced: TracedModel) -> list[ConvSite]:
    sites: dict[str, ConvSite] = {}
    handles = []
    for name, module in traced.module.named_modules():
        if _is_conv(module):

            def hook(mod, args, out, name=name):
                site = sites.setdefault(name, ConvSite(name, mod))
                site.calls.append((tuple(args[0].shape[1:]), tuple(out.shape[1:])))

            handles.append(module.register_forward_hook(hook))
    try:
        _check_runs(traced.module, traced.example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return list(sites.values())
