r"""Depthwise-separable form: a KhxKw conv C→M becomes T depthwise KhxKw filters per input channel and a
1x1 pointwise conv C·T→M (Network Decoupling, Guo et al. 2018).

Math. For each input channel c, reshape that channel's slice of the weight to a matrix
A_c = W[:, c] ∈ R^{M × (Kh·Kw)} and take its SVD A_c = U Σ Vᵀ. Keeping the top T terms,

    W[m, c] ≈ Σ_t  P[m, c, t] · D[c, t],   D[c, t] = √σ_t · V[:, t] (a Kh×Kw filter),
                                           P[m, c, t] = √σ_t · U[m, t]   (singular values split evenly),

so y_m = Σ_c Σ_t P[m,c,t] · (D[c,t] ⋆ x_c): a depthwise conv with T filters per channel followed by a 1x1
conv over the C·T responses. At T = min(M, Kh·Kw) the factorisation is exact. Kept energy of a layer at
rank T is Σ_c Σ_{t<T} σ_{c,t}² / ‖W‖²; the relative weight error is the square root of what is dropped.

Cost per output pixel: depthwise C·T·Kh·Kw + pointwise C·T·M MACs, against C·Kh·Kw·M for the dense conv,
i.e. a ratio T·(1/M + 1/(Kh·Kw)). Stride, padding (ints, 'same', padding modes) and dilation go on the
depthwise part; the bias goes on the pointwise part.

Grouped convs (ResNeXt's grouped 3x3, groups g). Each input channel c belongs to one group k and only reaches
that group's M/g outputs O_k, so the same SVD runs on A_c = W[O_k, c] ∈ R^{(M/g) × (Kh·Kw)}: the depthwise part
is unchanged and the pointwise part becomes a grouped 1x1 conv C·T→M with g groups. Cost per output pixel
C·T·Kh·Kw + C·T·M/g against C·Kh·Kw·M/g, exact at T = min(M/g, Kh·Kw). (ResNeXt-50's 3x3 with 4 channels per
group: rank 1 costs 1/4 + 1/9 = 36 % of the dense MACs.)

Emission. ONNX Runtime's fast CPU path (NCHWc) takes plain depthwise convs (one filter per channel) but
not a channel multiplier T > 1, which runs 1.3–2.4× slower than the dense conv it replaces. So rank t runs as
its own plain depthwise conv D_t and 1x1 conv P_t, and the T branches are summed (``sum``, the default: ORT
fuses the adds into the convs), or the T depthwise responses are concatenated into one 1x1 conv (``concat``).
Measured on ORT 1.32 CPU, batch 32, 16→16 at 32×32, T = 2: ``sum`` 0.67× the dense time, ``concat`` 0.85×,
channel multiplier 1.86×; feeding ``x.repeat(1, T, 1, 1)`` to one depthwise conv 1.00× (the copy runs outside
the blocked layout).

Example:
    >>> conv = nn.Conv2d(16, 32, 3, padding=1)
    >>> sep = convert_dwsep(conv, rank=9)          # full rank: exact
    >>> x = torch.randn(2, 16, 8, 8)
    >>> torch.allclose(sep(x), conv(x), atol=1e-5)
    True
"""

from __future__ import annotations

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
)
from convslim.convert.registry import register_form
from convslim.errors import UsageError

EMISSIONS = ("sum", "concat")


class DepthwiseSeparableConv(nn.Module):
    """T branches of (plain depthwise conv → 1x1 conv C→M), summed; or T depthwise convs concatenated into one
    1x1 conv C·T→M (``emission="concat"``). At T = 1 both are one depthwise conv and one pointwise conv."""

    def __init__(self, depthwise: list[nn.Conv2d], pointwise: list[nn.Conv2d], emission: str = "sum"):
        super().__init__()
        if emission not in EMISSIONS:
            raise ValueError(f"emission must be one of {EMISSIONS}, got {emission!r}")
        self.depthwise = nn.ModuleList(depthwise)
        self.pointwise = nn.ModuleList(pointwise)
        self.emission = emission

    @property
    def rank(self) -> int:
        return len(self.depthwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.emission == "concat":
            return self.pointwise[0](torch.cat([dw(x) for dw in self.depthwise], dim=1))
        out = self.pointwise[0](self.depthwise[0](x))
        for dw, pw in zip(self.depthwise[1:], self.pointwise[1:], strict=True):
            out = out + pw(dw(x))
        return out


def channel_spectra(weight: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched SVD of W[O_k, c] reshaped (M/g) × (Kh·Kw) for every input channel c (of group k): (U, S, Vh) with
    a leading C axis; with ``groups=1`` that is W[:, c] reshaped M × (Kh·Kw)."""
    out_ch, in_per_group, kh, kw = weight.shape
    per_group = out_ch // groups
    w = weight.detach().double().reshape(groups, per_group, in_per_group, kh * kw)
    mats = w.permute(0, 2, 1, 3).reshape(groups * in_per_group, per_group, kh * kw)
    return torch.linalg.svd(mats, full_matrices=False)


def convert_dwsep(conv: nn.Conv2d, rank: int, emission: str = "sum") -> DepthwiseSeparableConv:
    """Pure function: the rank-``rank`` depthwise-separable replacement of ``conv`` (grouped: per group, with a
    grouped pointwise part; ``emission="concat"`` takes groups=1 convs only)."""
    out_ch, in_per_group, kh, kw = conv.weight.shape
    groups = conv.groups
    in_ch, per_group = conv.in_channels, out_ch // groups
    if groups > 1 and emission == "concat":
        raise ValueError("dwsep: the concat emission takes groups=1 convs only; use emission='sum'")
    rank = min(rank, per_group, kh * kw)
    u, s, vh = channel_spectra(conv.weight, groups)
    root = s[:, :rank].sqrt()  # (C, T)
    filters = (vh[:, :rank, :] * root[:, :, None]).reshape(in_ch, rank, kh, kw)  # D[c, t]
    mix = u[:, :, :rank] * root[:, None, :]  # P[c, m within the group of c, t]
    like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    has_bias = conv.bias is not None

    def depthwise(t: int) -> nn.Conv2d:
        dw = nn.Conv2d(
            in_ch,
            in_ch,
            (kh, kw),
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=in_ch,
            bias=False,
            padding_mode=conv.padding_mode,
        ).to(**like)
        with torch.no_grad():
            dw.weight.copy_(filters[:, t].unsqueeze(1))
        return dw

    def pointwise(weight: torch.Tensor, bias: bool) -> nn.Conv2d:
        pw = nn.Conv2d(weight.shape[1] * groups, out_ch, 1, groups=groups, bias=bias).to(**like)
        with torch.no_grad():
            pw.weight.copy_(weight.reshape(out_ch, -1, 1, 1))
            if bias:
                pw.bias.copy_(conv.bias)
        return pw

    depthwise_convs = [depthwise(t) for t in range(rank)]
    if emission == "concat":  # input channel t·C + c of the single 1x1 conv is filter t of channel c
        pointwise_convs = [pointwise(mix.permute(1, 2, 0).reshape(out_ch, rank * in_ch), has_bias)]
    else:
        # grouped 1x1 weight row k·M/g + m, column j is P[k·C/g + j, m, t]
        grouped = [mix[:, :, t].reshape(groups, in_per_group, per_group).transpose(1, 2) for t in range(rank)]
        pointwise_convs = [
            pointwise(grouped[t].reshape(out_ch, in_per_group), has_bias and t == 0) for t in range(rank)
        ]
    return DepthwiseSeparableConv(depthwise_convs, pointwise_convs, emission)


def dwsep_weight_error(weight: torch.Tensor, rank: int, groups: int = 1) -> float:
    _, s, _ = channel_spectra(weight, groups)
    total = (s**2).sum()
    dropped = (s[:, rank:] ** 2).sum()
    return float((dropped / total.clamp_min(1e-30)).sqrt())


class DwsepForm(Form):
    name = "dwsep"
    options = (
        Option(
            "rank", float, "dwsep: rank T, depthwise filters per input channel", 1, check=whole_at_least(1)
        ),
        Option(
            "energy",
            float,
            "keep this fraction of each layer's weight energy (sets the rank; overrides --rank)",
            check=in_interval(0, 1, False, True),
        ),
        Option(
            "emission", str, "dwsep: how rank T > 1 runs: T summed branches or one concat", "sum", EMISSIONS
        ),
    )
    setting_options = (
        Option("rank", int, "depthwise filters per input channel", check=whole_at_least(1), required=True),
    )

    def settings_from_options(self, site: ConvSite, options: dict[str, Any]) -> dict[str, Any]:
        energy = options.get("energy")
        if energy is not None:
            if not 0 < energy <= 1:
                raise UsageError(f"--energy must be in (0, 1], got {energy}")
            reason = plain_conv2d_reason(site.conv)
            rank = (
                1
                if reason
                else rank_for_energy(channel_spectra(site.conv.weight, site.conv.groups)[1], energy)
            )
        else:
            rank = options.get("rank")
            rank = 1 if rank is None else rank
            if not float(rank).is_integer() or rank < 1:
                raise UsageError(f"--rank for dwsep must be a whole number ≥ 1, got {rank}")
            rank = int(rank)
        return {"rank": rank, "emission": options.get("emission") or "sum"}

    def supports(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        conv = site.conv
        reason = plain_conv2d_reason(conv)
        if reason:
            return reason
        out_ch, in_per_group, kh, kw = conv.weight.shape
        if conv.groups == conv.in_channels and in_per_group == 1:
            return "already depthwise"
        if conv.groups != 1 and setting.get("emission") == "concat":
            return f"grouped conv (groups={conv.groups}): the concat emission takes groups=1 convs only"
        if kh * kw == 1:
            return "1x1 kernel: already pointwise, nothing to separate"
        return self.no_saving_reason(site, setting, f"rank {setting['rank']}")

    def as_built(self, site: ConvSite, setting: dict[str, Any]) -> dict[str, Any]:
        out_ch, _, kh, kw = site.conv.weight.shape
        return {
            **setting,
            "rank": min(setting["rank"], out_ch // site.conv.groups, kh * kw),
        }  # as convert_dwsep

    def cost(self, site: ConvSite, setting: dict[str, Any]) -> Cost:
        conv = site.conv
        out_ch, _, kh, kw = conv.weight.shape
        per_group = out_ch // conv.groups
        rank = min(setting["rank"], per_group, kh * kw)
        per_pixel = conv.in_channels * rank * (kh * kw + per_group)
        bias = out_ch if conv.bias is not None else 0
        return Cost(params=per_pixel + bias, macs=per_pixel * site.output_pixels())

    def convert(self, conv: nn.Conv2d, setting: dict[str, Any]) -> nn.Module:
        return convert_dwsep(conv, setting["rank"], setting.get("emission", "sum"))

    def weight_error(self, conv: nn.Conv2d, setting: dict[str, Any]) -> float | None:
        return dwsep_weight_error(conv.weight, setting["rank"], conv.groups)


register_form(DwsepForm())
