r"""Grouped form: a dense conv C→M becomes a grouped conv with g groups, on input and output channel orders chosen
from the trained weights (and activations, when calibration data is given); ``mix`` adds a pointwise 1×1.

Which channels share a group. Let E[m, c] = Σ_{h,w} W[m,c,h,w]² · s_c, with s_c = E[x_c²] on calibration data
(s_c = 1 without data), the energy input channel c sends to output m. A grouping keeps Σ_k Σ_{m∈O_k, c∈I_k}
E[m,c] and drops the rest. We maximise it over balanced partitions (|I_k| = C/g, |O_k| = M/g) by alternating
exact balanced assignments: given the input groups, each output goes to the group it gets most energy from
(a Hungarian assignment with every group repeated M/g times), then the same for the inputs, until the kept
energy stops rising. Starts: the identity order and a spectral co-clustering order (Dhillon 2001: channels
sorted by the second singular vectors of D_M^{-1/2} E D_C^{-1/2}); the best result wins, so it never keeps
less than the identity grouping. Either side can be fixed (the graph pass uses that to avoid gathers).

Plain form. With in_perm / out_perm the chosen orders (group k = the k-th contiguous block of each),
y = G(x[:, in_perm])[:, out_perm⁻¹] where G is the grouped conv with weight rows W[out_perm][:, block]. Params
and MACs: C·K²·M/g (·H'W'). At g = 1 it is exact.

Mix. For each input group I_k, the SVD of W[:, I_k] reshaped M × (C/g·Kh·Kw) = U Σ Vᵀ gives R/g filters
√σ·Vᵀ (a grouped conv C→R) and a 1×1 conv R→M with columns U·√σ; summing over groups reproduces W exactly at
full width R = g·min(M, C/g·Kh·Kw). g = C is the depthwise-separable form. Cost: (R·C/g·K² + R·M)·H'W'.

The gathers cost memory traffic, so ``convslim.passes.permute.fold_permutations`` (the form's ``graph_pass``)
folds them into neighbouring convs, or fixes the channel order where channels are coupled (residual add, concat) with
``permute="consistent"`` (the default), or keeps them as explicit gathers with ``permute="gather"``.

Example:
    >>> conv = nn.Conv2d(16, 32, 3, padding=1)
    >>> grouped = convert_grouped(conv, {"groups": 4})
    >>> grouped.conv.groups, grouped.in_index.shape
    (4, torch.Size([16]))
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from convslim.convert.base import (
    ConvSite,
    Cost,
    Form,
    Option,
    numbers_at_least,
    plain_conv2d_reason,
    whole_at_least,
    whole_or_fraction,
)
from convslim.convert.registry import register_form
from convslim.core.regroup import Regroupable
from convslim.errors import UsageError

POLICIES = ("consistent", "gather")
DEFAULT_GROUPS = 4
# co_cluster results by content: a layer is clustered for its weight error, its conversion and each regroup of
# the permutation pass, and one Hungarian assignment on a 2048-channel layer takes seconds
_CLUSTER_CACHE: OrderedDict = OrderedDict()
_CLUSTER_CACHE_SIZE = 512


class GroupedConv(Regroupable):
    """x[:, in_index] → grouped conv → (1×1 mix) → [:, out_index]; absent indices mean no gather."""

    def __init__(self, conv: nn.Conv2d, mix: nn.Conv2d | None, in_index, out_index, source=None, orders=None):
        super().__init__()
        self.conv, self.mix = conv, mix
        self.register_buffer("in_index", in_index)
        self.register_buffer("out_index", out_index)
        # For the graph pass only (released when it is done): the dense conv, in a tuple so it is no submodule, and
        # the chosen (in_perm, out_perm) channel orders, which stay known after the gathers are folded away.
        self._source = source
        self.orders = orders

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(1, self.in_index)
        y = self.conv(x)
        if self.mix is not None:
            y = self.mix(y)
        if self.out_index is not None:
            y = y.index_select(1, self.out_index)
        return y

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    def channel_orders(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.orders

    def output_conv(self) -> nn.Conv2d | None:
        return self.mix

    def regroup(self, setting, *, fixed_in, fixed_out, gather_in: bool, gather_out: bool) -> GroupedConv:
        if self._source is None:
            raise RuntimeError("this grouped layer was finalized; regroup it before fold_permutations ends")
        return convert_grouped(self._source[0], setting, fixed_in, fixed_out, gather_in, gather_out)

    def release_source(self) -> None:
        self._source = None


def energy_matrix(weight: torch.Tensor, in_scale=None) -> np.ndarray:
    e = weight.detach().double().pow(2).sum(dim=(2, 3))
    if in_scale is not None:
        e = e * torch.as_tensor(in_scale, dtype=torch.double)[None, :]
    return e.cpu().numpy()


def _assign(score: np.ndarray, groups: int) -> np.ndarray:
    """Balanced labels maximising Σ score[i, label_i], each group getting exactly n/g members."""
    size = score.shape[0] // groups
    rows, cols = linear_sum_assignment(-np.repeat(score, size, axis=1))
    labels = np.empty(score.shape[0], dtype=np.int64)
    labels[rows] = cols // size
    return labels


def _onehot(labels: np.ndarray, groups: int) -> np.ndarray:
    return np.eye(groups)[labels]


def kept_energy(e: np.ndarray, out_labels: np.ndarray, in_labels: np.ndarray) -> float:
    return float((e * (out_labels[:, None] == in_labels[None, :])).sum())


def _spectral_labels(e: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    d_out, d_in = e.sum(1) + 1e-30, e.sum(0) + 1e-30
    u, _, vt = np.linalg.svd(e / np.sqrt(d_out)[:, None] / np.sqrt(d_in)[None, :], full_matrices=False)
    k = min(1, u.shape[1] - 1)

    def chunks(vec: np.ndarray) -> np.ndarray:
        labels = np.empty(len(vec), dtype=np.int64)
        labels[np.argsort(vec, kind="stable")] = np.arange(len(vec)) // (len(vec) // groups)
        return labels

    return chunks(u[:, k] / np.sqrt(d_out)), chunks(vt[k] / np.sqrt(d_in))


def co_cluster(e: np.ndarray, groups: int, fixed_in=None, fixed_out=None, max_iter: int = 8):
    """(out_labels, in_labels) of a balanced co-clustering of E (M×C); fixed sides are given as labels."""
    m, c = e.shape
    ident_out, ident_in = np.arange(m) // (m // groups), np.arange(c) // (c // groups)
    starts = [(ident_out, ident_in)]
    if groups > 1 and (fixed_in is None or fixed_out is None):
        starts.append(_spectral_labels(e, groups))
    best = None
    for out_l, in_l in starts:
        out_l = out_l if fixed_out is None else fixed_out
        in_l = in_l if fixed_in is None else fixed_in
        score = kept_energy(e, out_l, in_l)
        for _ in range(max_iter if groups > 1 else 0):
            if fixed_out is None:
                out_l = _assign(e @ _onehot(in_l, groups), groups)
            if fixed_in is None:
                in_l = _assign(e.T @ _onehot(out_l, groups), groups)
            new = kept_energy(e, out_l, in_l)
            if new <= score * (1 + 1e-12):
                score = max(score, new)
                break
            score = new
        if best is None or score > best[0]:
            best = (score, out_l, in_l)
    return best[1], best[2]


def cached_co_cluster(e: np.ndarray, groups: int, fixed_in=None, fixed_out=None):
    """``co_cluster`` memoised on the bytes of E and of the fixed sides (it is deterministic)."""
    parts = [
        e,
        np.asarray(fixed_in if fixed_in is not None else []),
        np.asarray(fixed_out if fixed_out is not None else []),
    ]
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(np.ascontiguousarray(part).tobytes() + b"|")
    key = (digest.hexdigest(), e.shape, groups, fixed_in is None, fixed_out is None)
    if key not in _CLUSTER_CACHE:
        _CLUSTER_CACHE[key] = co_cluster(e, groups, fixed_in, fixed_out)
        while len(_CLUSTER_CACHE) > _CLUSTER_CACHE_SIZE:
            _CLUSTER_CACHE.popitem(last=False)
    _CLUSTER_CACHE.move_to_end(key)
    out_labels, in_labels = _CLUSTER_CACHE[key]
    return out_labels.copy(), in_labels.copy()


def labels_to_perm(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.argsort(labels, kind="stable")).long()


def perm_to_labels(perm: torch.Tensor, groups: int) -> np.ndarray:
    labels = np.empty(len(perm), dtype=np.int64)
    labels[perm.numpy()] = np.arange(len(perm)) // (len(perm) // groups)
    return labels


def _like_conv(conv: nn.Conv2d, in_ch: int, out_ch: int, groups: int, weight, bias) -> nn.Conv2d:
    new = nn.Conv2d(
        in_ch,
        out_ch,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=bias is not None,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _mix_parts(conv: nn.Conv2d, in_perm: torch.Tensor, groups: int, per_group: int):
    """Per input group k: R/g filters √σ·Vᵀ of W[:, I_k] and the 1×1 columns U·√σ (module docstring)."""
    w = conv.weight.detach().double()
    out_ch, in_ch = w.shape[:2]
    size = in_ch // groups
    filters, columns = [], []
    for k in range(groups):
        block = w[:, in_perm[k * size : (k + 1) * size]]
        u, s, vh = torch.linalg.svd(block.reshape(out_ch, -1), full_matrices=False)
        root = s[:per_group].sqrt()
        filters.append((vh[:per_group] * root[:, None]).reshape(per_group, size, *w.shape[2:]))
        columns.append(u[:, :per_group] * root[None, :])
    return torch.cat(filters), torch.cat(columns, dim=1)[:, :, None, None]


def full_width(conv: nn.Conv2d, groups: int) -> int:
    out_ch, in_ch, kh, kw = conv.weight.shape
    return groups * min(out_ch, in_ch // groups * kh * kw)


def convert_grouped(
    conv: nn.Conv2d,
    setting: dict[str, Any],
    fixed_in=None,
    fixed_out=None,
    gather_in: bool = True,
    gather_out: bool = True,
) -> GroupedConv:
    """Pure: the grouped replacement of ``conv``; ``fixed_in``/``fixed_out`` pin a channel order (a permutation)."""
    groups, width = setting["groups"], setting.get("width")
    out_ch, in_ch = conv.weight.shape[:2]
    e = energy_matrix(conv.weight, setting.get("in_scale"))
    fin = None if fixed_in is None else perm_to_labels(fixed_in, groups)
    fout = None if fixed_out is None or width else perm_to_labels(fixed_out, groups)
    out_labels, in_labels = cached_co_cluster(e, groups, fin, fout)
    in_perm = labels_to_perm(in_labels) if fixed_in is None else fixed_in
    source = (
        copy.deepcopy(conv),
    )  # the dense conv, kept for the graph pass; ``conv`` itself stays untouched
    bias = conv.bias.detach() if conv.bias is not None else None
    in_index = in_perm.to(conv.weight.device) if gather_in else None
    if width:
        per_group = min(width // groups, full_width(conv, groups) // groups)
        filters, columns = _mix_parts(conv, in_perm, groups, per_group)
        grouped = _like_conv(conv, in_ch, groups * per_group, groups, filters, None)
        mix = nn.Conv2d(groups * per_group, out_ch, 1, bias=bias is not None)
        mix = mix.to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            mix.weight.copy_(columns)
            if bias is not None:
                mix.bias.copy_(bias)
        return GroupedConv(grouped, mix, in_index, None, source, (in_perm, None))
    out_perm = labels_to_perm(out_labels) if fixed_out is None else fixed_out
    w = conv.weight.detach()[out_perm][:, in_perm]
    blocks = w.reshape(groups, out_ch // groups, groups, in_ch // groups, *w.shape[2:])
    diagonal = torch.cat([blocks[k, :, k] for k in range(groups)])  # group k: outputs O_k × inputs I_k
    grouped = _like_conv(conv, in_ch, out_ch, groups, diagonal, None if bias is None else bias[out_perm])
    out_index = torch.argsort(out_perm).to(conv.weight.device) if gather_out else None
    return GroupedConv(grouped, None, in_index, out_index, source, (in_perm, out_perm))


def _ratio_or_int(value, full: int, flag: str) -> int:
    if 0 < value < 1:
        return max(1, math.ceil(value * full))
    if value >= 1 and float(value).is_integer():
        return int(value)
    raise UsageError(f"{flag} must be a whole number ≥ 1 or a fraction in (0, 1), got {value}")


def channel_scale(sample: torch.Tensor | None) -> list[float] | None:
    """E[x_c²] per input channel on calibration data, rounded so plans stay readable."""
    if sample is None or sample.dim() != 4:
        return None
    return [float(f"{v:.4g}") for v in sample.double().pow(2).mean(dim=(0, 2, 3)).tolist()]


class GroupedForm(Form):
    name = "grouped"
    graph_pass = "fold_permutations"  # the gathers fold into neighbouring convs (``convslim.passes.permute``)
    options = (
        Option("groups", int, "grouped: groups g", DEFAULT_GROUPS, check=whole_at_least(1)),
        Option("mix", bool, "grouped: add a pointwise 1x1 that mixes the groups", False),
        Option(
            "width",
            float,
            "grouped --mix: width R of the mixer (a fraction < 1 means of full width; default: out channels)",
            check=whole_or_fraction,
        ),
        Option(
            "permute",
            str,
            "grouped: where channels are coupled (residual add, concat) keep the identity order "
            "(consistent) or an explicit channel gather",
            "consistent",
            POLICIES,
        ),
    )
    setting_options = (
        Option("groups", int, "groups g", check=whole_at_least(1), required=True),
        Option("width", int, "filters of the mixer", check=whole_at_least(1)),
        Option("in_scale", list, "input channel scales", check=numbers_at_least(0)),
    )

    def settings_from_options(self, site: ConvSite, options: dict[str, Any]) -> dict[str, Any]:
        groups = options.get("groups")
        groups = DEFAULT_GROUPS if groups is None else groups
        if not float(groups).is_integer() or groups < 1:
            raise UsageError(f"--groups must be a whole number ≥ 1, got {groups}")
        policy = options.get("permute") or "consistent"
        if policy not in POLICIES:
            raise UsageError(f"--permute must be one of {', '.join(POLICIES)}, got {policy!r}")
        setting: dict[str, Any] = {"groups": int(groups), "permute": policy}
        conv = site.conv
        if options.get("mix") and not plain_conv2d_reason(conv) and conv.in_channels % int(groups) == 0:
            full = full_width(conv, int(groups))
            width = _ratio_or_int(options.get("width") or conv.out_channels, full, "--width")
            setting["width"] = min(full, math.ceil(width / groups) * int(groups))  # R/g filters per group
        scale = channel_scale(site.input_sample)
        if scale is not None:
            setting["in_scale"] = scale
        return setting

    def setting_problem(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        conv, groups, width = site.conv, setting["groups"], setting.get("width")
        scale = setting.get("in_scale")
        if scale is not None and len(scale) != conv.in_channels:
            return f"in_scale has {len(scale)} values for {conv.in_channels} input channels"
        if width is not None and not plain_conv2d_reason(conv) and conv.in_channels % groups == 0:
            full = full_width(conv, groups)
            if width % groups or width > full:
                return f"width {width} must be a multiple of groups={groups} and at most {full}"
        return None

    def supports(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        conv = site.conv
        reason = plain_conv2d_reason(conv)
        if reason:
            return reason
        if conv.groups != 1:
            return f"already grouped (groups={conv.groups})"
        g = setting["groups"]
        if conv.in_channels % g or conv.out_channels % g:
            return f"channels {conv.in_channels}→{conv.out_channels} not divisible by groups={g}"
        return self.no_saving_reason(site, setting, f"groups={g}")

    def cost(self, site: ConvSite, setting: dict[str, Any]) -> Cost:
        conv = site.conv
        out_ch, in_ch, kh, kw = conv.weight.shape
        g, width = setting["groups"], setting.get("width")
        per_pixel = in_ch * kh * kw * out_ch // g if not width else width * (in_ch // g * kh * kw + out_ch)
        bias = out_ch if conv.bias is not None else 0
        return Cost(params=per_pixel + bias, macs=per_pixel * site.output_pixels())

    def convert(self, conv: nn.Conv2d, setting: dict[str, Any]) -> nn.Module:
        return convert_grouped(conv, setting)

    def weight_error(self, conv: nn.Conv2d, setting: dict[str, Any]) -> float | None:
        w = conv.weight.detach().double()
        return float((effective_weight(convert_grouped(conv, setting)).double() - w).norm() / w.norm())

    def finalize(self, module: nn.Module, decisions: list, notes: list[str]) -> tuple[nn.Module, list]:
        # ORT runs grouped convs on its blocked NCHWc path only with 8- or 16-channel blocks per group
        odd = [d.name for d in decisions if (d.weight_shape[1] // d.setting["groups"]) % 8]
        if odd:
            notes.append(
                f"grouped: {len(odd)} layer(s) have input channels per group not a multiple of 8, so ORT may "
                f"run them off its fast NCHWc path; check their speed: {', '.join(odd[:6])}"
                + (" ..." if len(odd) > 6 else "")
            )
        return module, decisions


@torch.no_grad()
def effective_weight(module: GroupedConv) -> torch.Tensor:
    """The dense M×C×Kh×Kw kernel the grouped module applies (in the original channel orders)."""
    in_perm, out_perm = module.orders
    conv, g = module.conv, module.conv.groups
    w = conv.weight.double()
    size_in, size_out = conv.in_channels // g, conv.out_channels // g
    dense = torch.zeros(conv.out_channels, conv.in_channels, *w.shape[2:], dtype=torch.double)
    for k in range(g):
        dense[k * size_out : (k + 1) * size_out, k * size_in : (k + 1) * size_in] = w[k * size_out :][
            :size_out
        ]
    if module.mix is not None:
        dense = torch.einsum("mr,rchw->mchw", module.mix.weight.double()[:, :, 0, 0], dense)
    full = torch.zeros_like(dense)
    full[:, in_perm] = dense
    if out_perm is not None:
        full[out_perm] = full.clone()
    return full


register_form(GroupedForm())
