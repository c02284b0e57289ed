"""The contract every form implements, and the per-conv facts ("sites") forms decide on.

A form is mechanism only: given a trained conv and a concrete *setting* (e.g. ``{"rank": 2}``) it says
whether it can take the conv (``supports``), what it would cost (``cost``), and builds the replacement
(``convert``, a pure function that never touches the input conv). Which setting a layer gets is policy:
``settings_from_options`` turns user options (``--rank``, ``--energy`` ...) into a setting per conv, and the
planner may pick others.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from convslim.core.sites import ConvSite, Cost, dense_cost


def plain_conv2d_reason(conv: nn.Module) -> str | None:
    """Why ``conv`` is not a plain, trainable 2-D convolution a form can take, or None."""
    if isinstance(conv, nn.ConvTranspose2d):
        return "transposed convolution: not rewritten"
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not a 2-D convolution"
    if conv.weight.dim() != 4:
        return "weight is not 4-D"
    return None


class Form:
    """Base class of a conversion form. Subclasses set ``name`` and implement the four methods."""

    name: str = ""

    def settings_from_options(self, site: ConvSite, options: dict[str, Any]) -> dict[str, Any]:
        """Turn user options into this conv's concrete setting (policy; the planner may override it)."""
        raise NotImplementedError

    def supports(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        """None when the form can and should take ``site`` at ``setting``, else the reason it skips it."""
        raise NotImplementedError

    def cost(self, site: ConvSite, setting: dict[str, Any]) -> Cost:
        raise NotImplementedError

    def convert(self, conv: nn.Conv2d, setting: dict[str, Any]) -> nn.Module:
        """Pure: build the replacement module from the trained ``conv``; ``conv`` is left untouched."""
        raise NotImplementedError

    def no_saving_reason(self, site: ConvSite, setting: dict[str, Any], at: str) -> str | None:
        """The skip reason when the rewritten conv would not cost fewer MACs than the dense one (``at`` names
        the setting, e.g. "rank 3"), else None."""
        before, after = dense_cost(site).macs, self.cost(site, setting).macs
        if after >= before:
            return f"no saving at {at}: {after:,} MACs vs {before:,} dense"
        return None

    def weight_error(self, conv: nn.Conv2d, setting: dict[str, Any]) -> float | None:
        """‖W − W_approx‖ / ‖W‖ of the replacement's effective kernel, when the form defines one."""
        return None

    def finalize(self, module: nn.Module, decisions: list, notes: list[str]) -> nn.Module:
        """Graph-level work after this form's convs were swapped in (e.g. folding channel permutations or
        cancelling split/merge pairs). Gets and returns the whole (copied) model; appends report notes."""
        return module


__all__ = ["ConvSite", "Cost", "Form", "dense_cost", "plain_conv2d_reason"]
