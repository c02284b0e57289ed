"""The per-conv facts forms and planners decide on ("sites"), and the cost of a conv.

Example:
    >>> site = ConvSite("conv1", nn.Conv2d(16, 32, 3, padding=1), calls=[((16, 8, 8), (32, 8, 8))])
    >>> dense_cost(site)   # params 16·9·32 + 32 bias; MACs 16·9·32·8·8
    Cost(params=4640, macs=294912)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-accumulates per sample (batch 1), summed over every call of the conv."""

    params: int
    macs: int


@dataclass
class ConvSite:
    """One conv module of the model and the shapes it sees: ``calls`` holds (input CHW, output CHW) per call."""

    name: str
    conv: nn.Module
    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    input_sample: torch.Tensor | None = None  # this conv's inputs on calibration data, when data was given

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.calls[0][0] if self.calls else ()

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.calls[0][1] if self.calls else ()

    def output_pixels(self) -> int:
        """Σ over calls of H_out·W_out (the factor every per-pixel cost is multiplied by)."""
        return sum(out[-1] * out[-2] for _, out in self.calls if len(out) >= 2)


NO_SAVING = "no saving at"  # how every such skip reason starts (a plan file may still force the rewrite)


def no_saving_reason(dense: Cost, rewritten: Cost, at: str) -> str | None:
    """The skip reason when ``rewritten`` would not cost fewer MACs than ``dense`` (``at`` names the setting,
    e.g. "rank 3"), else None."""
    if rewritten.macs >= dense.macs:
        return f"{NO_SAVING} {at}: {rewritten.macs:,} MACs vs {dense.macs:,} dense"
    return None


def dense_cost(site: ConvSite) -> Cost:
    """Standard conv: params (C/g)·Kh·Kw·M (+M bias); MACs (C/g)·Kh·Kw·M·H'·W' per call."""
    conv = site.conv
    weight_params = conv.weight.numel()
    bias = conv.bias.numel() if getattr(conv, "bias", None) is not None else 0
    return Cost(params=weight_params + bias, macs=weight_params * site.output_pixels())
