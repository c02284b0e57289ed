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
setting carries those per-channel losses; the graph pass (``finalize`` → ``convslim.passes.octave``) picks one
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

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convslim.convert import register_form
from convslim.convert.base import ConvSite, Cost, Form, plain_conv2d_reason
from convslim.errors import UsageError

MIN_CHANNELS = 8  # fewer channels (an RGB image, a tiny layer): keep them all at full resolution


def octave_split_high(x: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return x.index_select(1, high)


def octave_split_low(x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x.index_select(1, low), 2)


def octave_upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def octave_merge(
    high: torch.Tensor,
    low: torch.Tensor,
    high_index: torch.Tensor,
    low_index: torch.Tensor,
    inverse: torch.Tensor,
) -> torch.Tensor:
    """cat(Y_H, up(Y_L)) reordered so channel c is back at index c (``inverse`` = argsort(h ++ l)).

    ``high_index``/``low_index`` are not used to compute: they ride along so graph passes can read the sets."""
    return torch.cat([high, octave_upsample(low)], dim=1).index_select(1, inverse)


def n_low(channels: int, alpha: float) -> int:
    """How many of ``channels`` go low at ``alpha``: round(α·C), never all, none below MIN_CHANNELS."""
    if channels < MIN_CHANNELS:
        return 0
    return min(math.floor(alpha * channels + 0.5), channels - 1)


def _index(values, count: int) -> torch.Tensor:
    return torch.as_tensor(sorted(int(v) for v in values), dtype=torch.long).reshape(count)


class OctaveConv2d(nn.Module):
    """split → four convs → merge. Missing branches (empty low sets) are None; the bias rides on hh and hl."""

    def __init__(self, conv: nn.Conv2d, low_in: list[int], low_out: list[int]):
        super().__init__()
        c_in, c_out = conv.in_channels, conv.out_channels
        low_in_set, low_out_set = set(low_in), set(low_out)
        self.register_buffer(
            "high_in", _index([c for c in range(c_in) if c not in low_in_set], c_in - len(low_in))
        )
        self.register_buffer("low_in", _index(low_in, len(low_in)))
        self.register_buffer(
            "high_out", _index([c for c in range(c_out) if c not in low_out_set], c_out - len(low_out))
        )
        self.register_buffer("low_out", _index(low_out, len(low_out)))
        self.register_buffer("inverse_out", torch.argsort(torch.cat([self.high_out, self.low_out])))
        self.hh = _cut(conv, self.high_out, self.high_in, bias=True)
        self.lh = _cut(conv, self.high_out, self.low_in, bias=False)
        self.hl = _cut(conv, self.low_out, self.high_in, bias=True)
        self.ll = _cut(conv, self.low_out, self.low_in, bias=False)

    def branches(self, xh: torch.Tensor, xl: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        yh = self.hh(xh)
        if self.lh is not None:
            yh = yh + octave_upsample(self.lh(xl))
        if self.hl is None:
            return yh, None
        yl = self.hl(F.avg_pool2d(xh, 2))
        if self.ll is not None:
            yl = yl + self.ll(xl)
        return yh, yl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xh = octave_split_high(x, self.high_in)
        xl = octave_split_low(x, self.low_in) if self.lh is not None or self.ll is not None else None
        yh, yl = self.branches(xh, xl)
        return yh if yl is None else octave_merge(yh, yl, self.high_out, self.low_out, self.inverse_out)

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """The dense conv this octave conv was cut from (exactly: the four kernels tile the weight)."""
        ref = self.hh
        c_in, c_out = len(self.high_in) + len(self.low_in), len(self.high_out) + len(self.low_out)
        conv = nn.Conv2d(
            c_in,
            c_out,
            ref.kernel_size,
            stride=ref.stride,
            padding=ref.padding,
            dilation=ref.dilation,
            bias=ref.bias is not None,
            padding_mode=ref.padding_mode,
        )
        conv = conv.to(ref.weight.device, ref.weight.dtype)
        for part, rows, cols in (
            (self.hh, self.high_out, self.high_in),
            (self.lh, self.high_out, self.low_in),
            (self.hl, self.low_out, self.high_in),
            (self.ll, self.low_out, self.low_in),
        ):
            if part is not None:
                conv.weight[rows[:, None], cols[None, :]] = part.weight
                if part.bias is not None:
                    conv.bias[rows] = part.bias
        return conv


def _cut(conv: nn.Conv2d, rows: torch.Tensor, cols: torch.Tensor, bias: bool) -> nn.Conv2d | None:
    if len(rows) == 0 or len(cols) == 0:
        return None
    has_bias = bias and conv.bias is not None
    part = nn.Conv2d(
        len(cols),
        len(rows),
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=has_bias,
        padding_mode=conv.padding_mode,
    )
    part = part.to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(conv.weight[rows][:, cols])
        if has_bias:
            part.bias.copy_(conv.bias[rows])
    return part


def convert_octave(conv: nn.Conv2d, low_in: list[int], low_out: list[int]) -> OctaveConv2d:
    """Pure: the octave replacement of a groups=1 ``conv`` with the given low-frequency channel indices."""
    return OctaveConv2d(conv, list(low_in), list(low_out))


def lowest(losses: list[float], count: int) -> list[int]:
    """Indices of the ``count`` smallest losses (ties by index), sorted."""
    order = sorted(range(len(losses)), key=lambda c: (losses[c], c))
    return sorted(order[:count])


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
    summary = "OctConv: a fraction alpha of channels at half resolution, split/merge cancelled across layers"

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

    def finalize(self, module: nn.Module, decisions: list, notes: list[str]) -> nn.Module:
        from torch import fx

        if not isinstance(module, fx.GraphModule):
            notes.append("octave: per-conv wrapper form (the model was not traced, so no region form)")
            return module
        from convslim.passes.octave import octave_region

        return octave_region(module, decisions, notes)


register_form(OctaveForm())
