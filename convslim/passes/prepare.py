"""Preparing a model for planning and rewriting: copy it, trace it, fold its BatchNorms, find every conv with
its shapes (and, with calibration images, what each conv sees).

Example:
    >>> prepared = prepare(model, torch.randn(1, 3, 32, 32))
    >>> [s.name for s in prepared.sites][:2]
    ['conv1', 'layer1.0.conv1']
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from convslim.core import ConvSite, Prepared, TracedModel
from convslim.core.samples import ACTIVATION_SAMPLES
from convslim.errors import UsageError
from convslim.inputs.data import check_finite_inputs
from convslim.inputs.loading import check_finite
from convslim.passes.fold_bn import fold_batchnorm
from convslim.passes.trace import collect_conv_sites, propagate_shapes_, trace_model, without_export_guards


def as_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def prepare(model: nn.Module, example_inputs, calibration: torch.Tensor | None = None) -> Prepared:
    """Copy, trace, fold BatchNorm and find every conv with its shapes.

    With ``calibration`` (a batch of real inputs), each site also gets ``input_sample``: what the conv sees on
    the first ``ACTIVATION_SAMPLES`` (64) of them, for forms that choose from activations.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    example_inputs = as_inputs(example_inputs)
    check_finite(model)
    original = without_export_guards(copy.deepcopy(model).eval())
    traced = trace_model(original, example_inputs)
    folded = 0
    if traced.mode == "fx":
        gm, folded = fold_batchnorm(traced.graph_module)
        traced = TracedModel(gm, example_inputs, "fx", traced.notes, traced.unconvertible)
        propagate_shapes_(traced)
    sites = collect_conv_sites(traced)
    if calibration is not None:
        check_finite_inputs(calibration, "calibration")
        record_input_samples(traced.module, sites, calibration[:ACTIVATION_SAMPLES])
    return Prepared(original, traced, sites, folded)


@torch.no_grad()
def record_input_samples(module: nn.Module, sites: list[ConvSite], batch: torch.Tensor) -> None:
    by_name = {s.name: s for s in sites}
    handles = []
    for name, sub in module.named_modules():
        if name in by_name:

            def hook(mod, args, out, site=by_name[name]):
                if site.input_sample is None:
                    site.input_sample = args[0].detach()

            handles.append(sub.register_forward_hook(hook))
    try:
        module(batch)
    finally:
        for handle in handles:
            handle.remove()
