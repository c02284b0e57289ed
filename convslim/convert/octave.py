r"""Octave form: a trained conv becomes an octave conv (OctConv, Chen et al. 2019) without retraining.

Math. A fraction α of the channels lives at half resolution. With input channels split into high set h_in and
low set l_in (X_H = x[h_in] at H×W, X_L = avgpool₂(x[l_in]) at H/2×W/2) and outputs into h_out, l_out,

    Y_H = conv_HH(X_H) + up(conv_LH(X_L)),        Y_L = conv_LL(X_L) + conv_HL(avgpool₂(X_H))

with 2×2 average pooling, nearest ×2 upsampling and the four kernels cut from the trained weight:
W_HH = W[h_out, h_in], W_LH = W[h_out, l_in], W_HL = W[l_out, h_in], W_LL = W[l_out, l_in]. Every kernel keeps
the conv's stride, padding and dilation, so a strided conv downsamples both branches. The per-conv wrapper
merges back to one tensor: merge(Y_H, Y_L) puts Y_H at channels h_out and up(Y_L) at l_out. At α = 0 there
is no low set and the wrapper is the original conv. MACs with a fraction α on both sides:
(1−α)² + (2α−α²)/4 = 1 − ¾·α·(2−α) of the dense conv; the parameters are unchanged.

Which channels are low is chosen: the ones whose maps lose least under up(avgpool₂(·)) (mean squared loss on
calibration inputs when given, else the non-DC energy of the kernels that read or write the channel). The
setting carries those per-channel losses; the graph pass (``graph_pass`` → ``convslim.passes.octave``) picks one
assignment per group of channels coupled through residual adds and concat, records it in the setting as
``low_in``/``low_out`` and cancels merge → elementwise ops → split chains (the region form). Setting
``octave_region=False`` keeps the per-conv wrapper form.

Example:
    >>> conv = nn.Conv2d(16, 32, 3, padding=1)
    >>> octave = convert_octave(conv, low_in=[], low_out=[])   # α = 0: exact
    >>> x = torch.randn(2, 16, 8, 8)
    >>> torch.allclose(octave(x), conv(x), atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convslim.convert.base import (
    ConvSite,
    Cost,
    Form,
    Option,
    in_interval,
    numbers_at_least,
    plain_conv2d_reason,
)
from convslim.convert.octave_conv import (
    MIN_CHANNELS,
    OctaveConv2d,
    convert_octave,
    lowest,
    n_low,
    octave_merge,
    octave_split_high,
    octave_split_low,
    octave_upsample,
)
from convslim.convert.registry import register_form
from convslim.errors import UsageError


def kernel_highpass_energy(weight: torch.Tensor, dim: int) -> list[float]:
    """Per channel along ``dim`` (0: outputs, 1: inputs): kernel energy minus its DC (mean) part."""
    w = weight.detach().double()
    mean = w.mean(dim=(2, 3), keepdim=True)
    per_filter = ((w - mean) ** 2).sum(dim=(2, 3))
    return _rounded(per_filter.sum(dim=1 - dim))


def activation_pool_loss(sample: torch.Tensor) -> list[float] | None:
    """Per channel mean of (x − up(avgpool₂(x)))² on calibration inputs; None when H or W is odd."""
    if sample is None or sample.dim() != 4 or sample.shape[-1] % 2 or sample.shape[-2] % 2:
        return None
    x = sample.detach().double()
    return _rounded(((x - octave_upsample(F.avg_pool2d(x, 2))) ** 2).mean(dim=(0, 2, 3)))


def _rounded(values: torch.Tensor) -> list[float]:
    return [float(f"{float(v):.6g}") for v in values]


def parse_alpha(options: dict[str, Any]) -> float:
    alpha = options.get("alpha")
    alpha = 0.5 if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise UsageError(f"--alpha for octave must be a number with 0 ≤ alpha < 1, got {alpha!r}")
    return float(alpha)


def _half_shape_reason(conv: nn.Conv2d, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> str | None:
    if any(s % 2 for s in (*in_hw, *out_hw)):
        return (
            f"odd spatial size (input {in_hw[0]}x{in_hw[1]}, output {out_hw[0]}x{out_hw[1]}): the "
            "half-resolution branch needs even sizes"
        )
    if conv.padding == "same" or conv.padding == "valid":
        return None if conv.padding == "same" else "padding='valid': half-resolution sizes do not line up"
    half = [_conv_size(n // 2, i, conv) for i, n in enumerate(in_hw)]
    if [2 * h for h in half] != list(out_hw):
        return f"the half-resolution branch gives {half[0]}x{half[1]}, not half of {out_hw[0]}x{out_hw[1]}"
    return None


def _conv_size(n: int, i: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


class OctaveForm(Form):
    name = "octave"
    graph_pass = "octave_region"  # split/merge as graph nodes, then cancelled (``convslim.passes.octave``)
    options = (
        Option(
            "alpha",
            float,
            "octave: fraction of channels at half resolution",
            0.5,
            check=in_interval(0, 1, True, False),
        ),
        Option(
            "octave_region",
            bool,
            "octave: keep the half-resolution channels low across layers (cancel merge/split pairs)",
            True,
        ),
    )
    setting_options = (
        Option("region", bool, "region form"),
        Option("in_loss", list, "per input channel loss at half resolution", check=numbers_at_least(0)),
        Option("out_loss", list, "per output channel loss at half resolution", check=numbers_at_least(0)),
        Option("loss_source", str, "where the losses came from", choices=("calibration", "weights")),
        Option("low_in", list, "input channels at half resolution", check=numbers_at_least(0, whole=True)),
        Option("low_out", list, "output channels at half resolution", check=numbers_at_least(0, whole=True)),
    )

    def setting_problem(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        counts = {"in_loss": site.conv.in_channels, "out_loss": site.conv.out_channels}
        counts.update(low_in=site.conv.in_channels, low_out=site.conv.out_channels)
        if ("low_in" in setting) != ("low_out" in setting):
            return "octave settings give low_in and low_out together"
        for key, channels in counts.items():
            values = setting.get(key)
            if values is None:
                continue
            if key.endswith("_loss"):
                if len(values) != channels:
                    return f"{key} has {len(values)} values for {channels} channels"
            elif len(set(values)) != len(values) or any(v >= channels for v in values):
                return f"{key} must list distinct channels below {channels}, got {values}"
        return None

    def settings_from_options(self, site: ConvSite, options: dict[str, Any]) -> dict[str, Any]:
        alpha = parse_alpha(options)
        region = options.get("octave_region", True)
        if not isinstance(region, bool):
            raise UsageError(f"octave_region must be true or false, got {region!r}")
        setting: dict[str, Any] = {"alpha": alpha, "region": region}
        conv = site.conv
        if plain_conv2d_reason(conv) or conv.groups != 1:
            return setting
        from_data = activation_pool_loss(site.input_sample)
        setting["in_loss"] = from_data or kernel_highpass_energy(conv.weight, 1)
        setting["out_loss"] = kernel_highpass_energy(conv.weight, 0)
        setting["loss_source"] = "calibration" if from_data else "weights"
        return setting

    def supports(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        conv = site.conv
        reason = plain_conv2d_reason(conv)
        if reason:
            return reason
        if conv.groups != 1:
            return f"grouped conv (groups={conv.groups}): octave takes groups=1 convs only"
        for in_shape, out_shape in site.calls:
            if len(in_shape) != 3 or len(out_shape) != 3:
                return "not a batched 2-D feature map"
            reason = _half_shape_reason(conv, tuple(in_shape[1:]), tuple(out_shape[1:]))
            if reason:
                return reason
        return None

    def cost(self, site: ConvSite, setting: dict[str, Any]) -> Cost:
        conv = site.conv
        c_out, c_in, kh, kw = conv.weight.shape
        lo_in, lo_out = self.low_channels(conv, setting)
        hi_in, hi_out = c_in - len(lo_in), c_out - len(lo_out)
        # Y_H from X_H at full resolution; the other three products run at a quarter of the pixels
        quarter_terms = hi_in * len(lo_out) + len(lo_in) * hi_out + len(lo_in) * len(lo_out)
        per_pixel4 = kh * kw * (4 * hi_in * hi_out + quarter_terms)
        bias = c_out if conv.bias is not None else 0
        return Cost(params=conv.weight.numel() + bias, macs=per_pixel4 * site.output_pixels() // 4)

    def low_channels(self, conv: nn.Conv2d, setting: dict[str, Any]) -> tuple[list[int], list[int]]:
        """The chosen low sets: from the setting when the graph pass recorded them, else this conv's own pick."""
        if "low_in" in setting and "low_out" in setting:
            return list(setting["low_in"]), list(setting["low_out"])
        alpha = setting.get("alpha", 0.5)
        c_in, c_out = conv.in_channels, conv.out_channels
        in_loss = setting.get("in_loss") or [0.0] * c_in
        out_loss = setting.get("out_loss") or [0.0] * c_out
        return lowest(in_loss, n_low(c_in, alpha)), lowest(out_loss, n_low(c_out, alpha))

    def convert(self, conv: nn.Conv2d, setting: dict[str, Any]) -> nn.Module:
        low_in, low_out = self.low_channels(conv, setting)
        return convert_octave(conv, low_in, low_out)


register_form(OctaveForm())


__all__ = [
    "MIN_CHANNELS",
    "OctaveConv2d",
    "OctaveForm",
    "activation_pool_loss",
    "convert_octave",
    "kernel_highpass_energy",
    "lowest",
    "n_low",
    "octave_merge",
    "octave_split_high",
    "octave_split_low",
    "octave_upsample",
    "parse_alpha",
]
