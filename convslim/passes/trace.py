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

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from convslim.core import ConvSite, TracedModel, parent_of
from convslim.errors import UsageError

FUNCTIONAL_CONVS = (F.conv2d, torch.conv2d, torch.ops.aten.conv2d.default)
# aten/torch order: (input, weight, bias, running_mean, running_var, training, momentum, eps, ...)
ATEN_BATCH_NORMS = (torch.ops.aten.batch_norm.default, torch.batch_norm)


def trace_model(model: nn.Module, example_inputs: tuple) -> TracedModel:
    """Copy, trace and shape-propagate ``model``; fall back to a module copy when tracing fails."""
    work = without_export_guards(copy.deepcopy(model).eval())
    _check_runs(
        work, example_inputs, hint=True
    )  # before tracing: the model's own attributes can name its size
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # noqa: BLE001  (any trace failure means: use the fallback)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        note = (
            f"torch.fx could not trace the model ({type(exc).__name__}: {reason[:160]}); "
            "fell back to swapping Conv2d modules in place, without BatchNorm folding"
        )
        return TracedModel(work, example_inputs, "module-swap", notes=[note])
    traced = TracedModel(gm, example_inputs, "fx")
    modularize_functional_convs_(traced)
    modularize_functional_batchnorms_(traced)
    propagate_shapes_(traced)
    return traced


def without_export_guards(module: nn.Module) -> nn.Module:
    """A ``torch.export`` module carries shape guards (e.g. batch == 2) that pin the shapes of that one export;
    return an equivalent GraphModule without them, since the rewritten model is exported again with a dynamic
    batch. Other modules are returned as they are."""
    if not hasattr(module, "_guards_fn") and not any(
        getattr(h, "__name__", "") == "_check_input_constraints_pre_hook"
        for h in module._forward_pre_hooks.values()
    ):
        return module
    gm = fx.symbolic_trace(module)
    for node in list(gm.graph.nodes):
        is_assert = node.op == "call_function" and node.target is torch._assert and len(node.args) > 1
        if (is_assert and str(node.args[1]).startswith("Guard failed")) or node.target == "_guards_fn":
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def propagate_shapes_(traced: TracedModel) -> None:
    """Run ShapeProp on the traced graph (in place: it only writes ``node.meta``)."""
    if traced.mode != "fx":
        return
    _check_runs(traced.graph_module, traced.example_inputs)  # a clean one-line error before ShapeProp's own
    with torch.no_grad():
        ShapeProp(traced.graph_module).propagate(*traced.example_inputs)


def _check_runs(module: nn.Module, example_inputs: tuple, hint: bool = False) -> None:
    with torch.no_grad():
        try:
            module(*example_inputs)
        except Exception as exc:  # noqa: BLE001
            message = _input_mismatch_message(example_inputs, exc)
            if hint:
                from convslim.inputs.hint import input_size_hint

                message += input_size_hint(module, example_inputs)
            raise UsageError(message) from None


def _input_mismatch_message(example_inputs: tuple, exc: Exception) -> str:
    shapes = ", ".join("x".join(map(str, t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the model does not run on inputs of shape {shapes}: {first[:200]}; check --input-shape"


def modularize_functional_convs_(traced: TracedModel) -> None:
    """Turn ``F.conv2d(x, <param>, <param or None>, ...)`` nodes into ``nn.Conv2d`` call_module nodes, whatever
    the call form (positional, ``weight=``/``input=`` keywords, stride/padding/dilation/groups either way).

    Convs that cannot be rewritten from trained weights (weight or bias computed at run time, a setting only known
    at run time) are recorded in ``traced.unconvertible`` with the reason, never silently ignored.
    """
    gm = traced.graph_module
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in FUNCTIONAL_CONVS:
            continue
        args, reason = conv_call_args(node)
        conv = None
        if args is not None:
            conv, reason = _conv_from_functional(gm, args)
        if conv is None:
            traced.unconvertible[node.name] = reason
            continue
        _replace_with_module(gm, node, args["input"], conv, _owner_name(gm, args["weight"], node.name))
    _drop_unused_attrs(gm)


def modularize_functional_batchnorms_(traced: TracedModel) -> None:
    """Turn eval-mode ``aten.batch_norm`` nodes with parameter statistics (as ``torch.export`` leaves them)
    into ``nn.BatchNorm2d`` modules, so they can be folded like module BatchNorms."""
    gm = traced.graph_module
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ATEN_BATCH_NORMS or len(node.args) < 8:
            continue
        x, weight, bias, mean, var, training, _, eps = node.args[:8]
        tensors = (weight, bias, mean, var)
        if training or not all(isinstance(t, fx.Node) and t.op == "get_attr" for t in tensors):
            continue
        weight, bias, mean, var = (_fetch_attr(gm, t.target) for t in tensors)
        bn = nn.BatchNorm2d(mean.numel(), eps=float(eps)).to(mean.device, mean.dtype).eval()
        with torch.no_grad():
            for dst, src in (
                (bn.weight, weight),
                (bn.bias, bias),
                (bn.running_mean, mean),
                (bn.running_var, var),
            ):
                dst.copy_(src)
        _replace_with_module(gm, node, x, bn, _owner_name(gm, node.args[3], node.name))
    _drop_unused_attrs(gm)


def _drop_unused_attrs(gm: fx.GraphModule) -> None:
    # get_attr nodes of the statistics we moved into modules would otherwise dangle once BN is folded away
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, x, module: nn.Module, name: str) -> None:
    _set_or_add_submodule(gm, name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (x,))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _owner_name(gm: fx.GraphModule, attr_node: fx.Node, fallback: str) -> str:
    """``layer1.0.conv1`` for a weight at ``layer1.0.conv1.weight`` when that owner holds nothing else we'd lose
    (as in ``torch.export`` modules), so the report uses the user's layer names; else a fresh name."""
    owner, _, _ = attr_node.target.rpartition(".")
    try:
        module = gm.get_submodule(owner) if owner else None
    except AttributeError:
        module = None
    if module is not None and type(module) is nn.Module and not list(module.children()):
        return owner
    return _free_name(gm, f"{fallback}_module")


def _set_or_add_submodule(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, child = parent_of(gm, name)
    if child in parent._modules:
        parent._modules[child] = module
    else:
        gm.add_submodule(name, module)


CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def conv_call_args(node: fx.Node) -> tuple[dict | None, str]:
    """The arguments of a ``conv2d`` call by name, whichever mix of positions and keywords it used, or None and
    the reason when the call cannot be read (an unknown keyword, a setting computed at run time)."""
    if len(node.args) > len(CONV_ARGS):
        return None, f"functional conv2d with {len(node.args)} positional arguments: not a conv2d call form"
    unknown = sorted(set(node.kwargs) - set(CONV_ARGS))
    if unknown:
        return None, f"functional conv2d with unexpected keyword(s) {', '.join(unknown)}: left as it is"
    args = dict(CONV_DEFAULTS, **dict(zip(CONV_ARGS, node.args, strict=False)), **node.kwargs)
    if "input" not in args or "weight" not in args:
        return None, "functional conv2d without an input or a weight argument: left as it is"
    computed = [k for k in ("stride", "padding", "dilation", "groups") if _has_node(args[k])]
    if computed:
        return None, f"functional conv2d whose {computed[0]} is computed at run time: left as it is"
    return args, ""


def _has_node(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_has_node(v) for v in value)
    return isinstance(value, fx.Node)


def _conv_from_functional(gm: fx.GraphModule, args: dict) -> tuple[nn.Conv2d | None, str]:
    weight, bias = args["weight"], args["bias"]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return (
            None,
            "functional conv2d whose weight is computed at run time: cannot rewrite from trained weights",
        )
    if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
        return None, "functional conv2d whose bias is computed at run time"
    w = _fetch_attr(gm, weight.target)
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        return None, "functional conv2d whose weight is not a 4-D tensor"
    out_ch, in_per_group, kh, kw = w.shape
    groups = int(args["groups"])
    try:
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
    except (ValueError, TypeError) as exc:  # settings nn.Conv2d refuses (e.g. 'same' with a stride)
        return None, f"functional conv2d with settings nn.Conv2d does not take ({exc}): left as it is"
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
        x = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        in_meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
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
