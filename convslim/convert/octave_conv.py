r"""The octave conv module and the split/merge functions its graph form is written in (no form logic here).

Kept apart from the form (``convert/octave.py``) so the graph passes (``passes/octave*.py``) can recognise these
functions and ``OctaveConv2d`` by identity without importing the form, which itself runs those passes. The
math is in ``convslim/convert/octave.py``'s docstring: X_H = x[h_in], X_L = avgpool₂(x[l_in]);
Y_H = conv_HH(X_H) + up(conv_LH(X_L)), Y_L = conv_LL(X_L) + conv_HL(avgpool₂(X_H)); merge puts Y_H at h_out
and up(Y_L) at l_out.

Example:
    >>> octave = convert_octave(nn.Conv2d(16, 32, 3, padding=1), low_in=[0, 1], low_out=[])
    >>> octave.lh is not None, octave.hl is None
    (True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
