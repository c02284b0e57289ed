r"""Spatial separation (Jaderberg et al. 2014, scheme 2): a Kh×Kw conv C→M becomes a Kh×1 conv C→r followed
by a 1×Kw conv r→M.

Math. Reshape the weight W ∈ R^{M×C×Kh×Kw} to A ∈ R^{(C·Kh)×(Kw·M)}, A[(c,h),(w,m)] = W[m,c,h,w], and take
its SVD A = U Σ Vᵀ. Keeping the top r terms, with singular values split evenly between the factors,

    V1[k, c, h] = √σ_k · U[(c,h), k]          (vertical Kh×1 filters, C→r)
    H1[m, k, w] = √σ_k · V[(w,m), k]          (horizontal 1×Kw filters, r→M)

so W[m,c,h,w] ≈ Σ_k H1[m,k,w] · V1[k,c,h] and y = H1 ⋆_w (V1 ⋆_h x). At r = min(C·Kh, Kw·M) it is exact.
A grouped conv (groups g) is separated per group: both convs keep ``groups=g`` and r is the rank per group.
Stride, padding and dilation split by axis: (s_h,1),(p_h,0),(d_h,1) on the first conv, (1,s_w),(0,p_w),(1,d_w)
on the second; 'same'/'valid' padding and every padding mode are separable by axis, so they are kept as they
are. The bias goes on the second conv.

A kernel with a unit axis (1×1, Kh×1, 1×Kw) has nothing left to split spatially; the same SVD is then a rank-r
factorisation of its channel mixing (Kh×1 C→r, then 1×1 r→M; a 1×1 becomes 1×1 C→r → 1×1 r→M), taken like any
other layer only where it saves MACs. In a bottleneck ResNet those 1×1 convs are where half rank saves anything:
on a square 3×3 conv with C = M, full rank is 3C and half rank costs r·(3C + 3M) = 9C², the dense cost, so
such layers are skipped. ``--exclude`` keeps chosen layers dense.

Cost with r per group: params r·(C·Kh + M·Kw); MACs r·C·Kh·H'·W + r·M·Kw·H'·W' per call (the first conv
keeps the input width W, which equals W' for stride 1 and 'same'-like padding: then r·(C·Kh + M·Kw)·H'W').
A layer is skipped when that is not below the dense cost.

Rank: ``rank`` ≥ 1 is r, a fraction in (0, 1) is that share of full rank (rounded up), or ``energy`` E picks the
smallest r keeping E of ‖W‖². ``rank_multiple`` (e.g. 8 or 16) rounds r up to a multiple of it (capped at full
rank): ORT's blocked NCHWc convs work on 8/16-channel blocks, so a rounded width can run as fast as a smaller one.

Example:
    >>> conv = nn.Conv2d(16, 32, 3, padding=1)
    >>> sep = convert_spatial(conv, rank=48)        # full rank min(16·3, 3·32): exact
    >>> x = torch.randn(2, 16, 8, 8)
    >>> torch.allclose(sep(x), conv(x), atol=1e-5)
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from convslim.convert.base import (
    ConvSite,
    Cost,
    Form,
    Option,
    in_interval,
    plain_conv2d_reason,
    rank_for_energy,
    whole_at_least,
    whole_or_fraction,
)
from convslim.convert.registry import register_form
from convslim.errors import UsageError


def group_spectra(weight: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched SVD of each group's weight reshaped (C/g·Kh) × (Kw·M/g): (U, S, Vh) with a leading g axis."""
    out_ch, in_per_group, kh, kw = weight.shape
    per_group = out_ch // groups
    w = weight.detach().double().reshape(groups, per_group, in_per_group, kh, kw)
    mats = w.permute(0, 2, 3, 4, 1).reshape(groups, in_per_group * kh, kw * per_group)
    return torch.linalg.svd(mats, full_matrices=False)


def full_rank(conv: nn.Conv2d) -> int:
    out_ch, in_per_group, kh, kw = conv.weight.shape
    return min(in_per_group * kh, kw * out_ch // conv.groups)


def _split_padding(padding) -> tuple[Any, Any]:
    if isinstance(padding, str):  # 'same' / 'valid' are per-axis rules, so each conv keeps the rule
        return padding, padding
    return (padding[0], 0), (0, padding[1])


def convert_spatial(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Pure function: the rank-``rank`` (per group) Kh×1 → 1×Kw replacement of ``conv``."""
    out_ch, in_per_group, kh, kw = conv.weight.shape
    groups = conv.groups
    per_group = out_ch // groups
    rank = max(1, min(rank, full_rank(conv)))
    u, s, vh = group_spectra(conv.weight, groups)
    root = s[:, :rank].sqrt()  # (g, r)
    vertical = (u[:, :, :rank] * root[:, None, :]).permute(0, 2, 1)  # (g, r, C/g·Kh)
    vertical = vertical.reshape(groups * rank, in_per_group, kh, 1)
    horizontal = (vh[:, :rank, :] * root[:, :, None]).reshape(groups, rank, kw, per_group)
    horizontal = horizontal.permute(0, 3, 1, 2).reshape(out_ch, rank, 1, kw)
    pad_v, pad_h = _split_padding(conv.padding)
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    first = nn.Conv2d(
        conv.in_channels,
        groups * rank,
        (kh, 1),
        stride=(s_h, 1),
        padding=pad_v,
        dilation=(d_h, 1),
        groups=groups,
        bias=False,
        padding_mode=conv.padding_mode,
    ).to(**like)
    second = nn.Conv2d(
        groups * rank,
        out_ch,
        (1, kw),
        stride=(1, s_w),
        padding=pad_h,
        dilation=(1, d_w),
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(**like)
    with torch.no_grad():
        first.weight.copy_(vertical)
        second.weight.copy_(horizontal)
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def spatial_weight_error(weight: torch.Tensor, groups: int, rank: int) -> float:
    _, s, _ = group_spectra(weight, groups)
    return float(((s[:, rank:] ** 2).sum() / (s**2).sum().clamp_min(1e-30)).sqrt())


def resolve_rank(conv: nn.Conv2d, options: dict[str, Any]) -> int:
    """The per-group rank the user's options ask for (before clamping to full rank)."""
    energy, rank = options.get("energy"), options.get("rank")
    full = full_rank(conv)
    if energy is not None:
        if not 0 < energy <= 1:
            raise UsageError(f"--energy must be in (0, 1], got {energy}")
        r = rank_for_energy(group_spectra(conv.weight, conv.groups)[1], energy)
    elif rank is None:
        r = max(1, math.ceil(full / 2))  # half rank: the documented default
    elif 0 < rank < 1:
        r = max(1, math.ceil(rank * full))
    elif rank >= 1 and float(rank).is_integer():
        r = int(rank)
    else:
        raise UsageError(f"--rank for spatial must be a whole number ≥ 1 or a fraction in (0, 1), got {rank}")
    multiple = options.get("rank_multiple")
    if multiple:
        if not float(multiple).is_integer() or multiple < 1:
            raise UsageError(f"--rank-multiple must be a whole number ≥ 1, got {multiple}")
        r = math.ceil(r / int(multiple)) * int(multiple)
    return min(r, full)


class SpatialForm(Form):
    name = "spatial"
    options = (
        Option(
            "rank", float, "spatial: rank r (a fraction < 1 means of full rank)", 0.5, check=whole_or_fraction
        ),
        Option(
            "energy",
            float,
            "keep this fraction of each layer's weight energy (sets the rank; overrides --rank)",
            check=in_interval(0, 1, False, True),
        ),
        Option(
            "rank_multiple",
            int,
            "spatial: round the rank up to a multiple (e.g. 8 or 16)",
            1,
            check=whole_at_least(1),
        ),
    )
    setting_options = (Option("rank", int, "rank r", check=whole_at_least(1), required=True),)

    def settings_from_options(self, site: ConvSite, options: dict[str, Any]) -> dict[str, Any]:
        if plain_conv2d_reason(site.conv):
            return {"rank": 1}
        return {"rank": resolve_rank(site.conv, options)}

    def supports(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        conv = site.conv
        reason = plain_conv2d_reason(conv)
        if reason:
            return reason
        return self.no_saving_reason(site, setting, f"rank {setting['rank']}")

    def as_built(self, site: ConvSite, setting: dict[str, Any]) -> dict[str, Any]:
        return {**setting, "rank": max(1, min(setting["rank"], full_rank(site.conv)))}  # as convert_spatial

    def cost(self, site: ConvSite, setting: dict[str, Any]) -> Cost:
        conv = site.conv
        out_ch, in_per_group, kh, kw = conv.weight.shape
        rank = min(setting["rank"], full_rank(conv))
        first, second = rank * conv.in_channels * kh, rank * out_ch * kw
        macs = 0
        for (_, _, w_in), out in site.calls:
            macs += first * out[-2] * w_in + second * out[-2] * out[-1]
        bias = out_ch if conv.bias is not None else 0
        return Cost(params=first + second + bias, macs=macs)

    def convert(self, conv: nn.Conv2d, setting: dict[str, Any]) -> nn.Module:
        return convert_spatial(conv, setting["rank"])

    def weight_error(self, conv: nn.Conv2d, setting: dict[str, Any]) -> float | None:
        return spatial_weight_error(conv.weight, conv.groups, min(setting["rank"], full_rank(conv)))


register_form(SpatialForm())
