r"""Stage 1 for depthwise-then-pointwise replacements: the depthwise filters in closed form, given the heads.

A replacement whose linear heads (``affine.linear_heads``) read the outputs of plain depthwise convs of the
module's input (dwsep: T depthwise K×K filters per channel, then 1x1 heads) computes

    y[m, p] = Σ_j Σ_c P_j[m, c] · Σ_k D_j[c, k] · Z[c, k, p] + b[m]

with Z the K×K patches of the input (``F.unfold``: the depthwise conv's stride, padding and dilation), D_j the
filters of depthwise conv j and P_j[m, c] the weight its channel c has in the heads (a grouped head expands to a
block-diagonal dense matrix). Given P this is linear in θ = (D_j[c, k]); least squares over all pixels has the
normal equations

    G θ = r,   G[(j,c,k), (j',c',k')] = Q[(j,c), (j',c')] · S[(c,k), (c',k')],   Q = Pᵀ P,  S = Σ_p Z Zᵀ
    r[j, c, k] = Σ_p (P_jᵀ (y − b))[c, p] · Z[c, k, p]

(ridge λ = 10⁻⁵ · mean diag G). Stage 1 alternates: heads given filters (``reconstruct.fit_heads``), filters
given heads (here), heads again. On ResNet-20's ×2 plan (18 dwsep layers, ranks 1–3, 1,024 calibration images,
filters fitted on 256 of them) two rounds took stage 1 from 79.7 % to 82.0 % top-1 on val5k (10 s → 24 s).

Example:
    >>> feeds = depthwise_feeds(module, heads, probe)       # None: not this structure
    >>> fit_depthwise(module, feeds, pairs[:2])             # then fit_heads(module, heads, pairs) again
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convslim import parallel

MAX_UNKNOWNS = 4096  # G is (unknowns)² float64: 128 MiB at this size; larger layers keep the SVD filters
_CHUNK_ENTRIES = 4_000_000  # unfolded patch entries per chunk (32 MiB in float64)


def _is_plain_depthwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups == m.in_channels == m.out_channels
        and m.bias is None
        and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple)
    )


@torch.no_grad()
def depthwise_feeds(module: nn.Module, heads: list[nn.Conv2d], sample: torch.Tensor) -> list[list] | None:
    """For each head, the depthwise convs whose outputs, concatenated, are its input, each reading the
    module's input; None unless every head is fed so, by convs of one geometry, within ``MAX_UNKNOWNS``."""
    convs = [m for m in module.modules() if _is_plain_depthwise(m)]
    if not convs or not heads:
        return None
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    head_in: dict[int, torch.Tensor] = {}

    def record_conv(mod, args, out) -> None:
        seen.setdefault(id(mod), (args[0], out))

    def record_head(mod, args) -> None:
        head_in.setdefault(id(mod), args[0])

    hooks = [m.register_forward_hook(record_conv) for m in convs]
    hooks += [h.register_forward_pre_hook(record_head) for h in heads]
    try:
        module(sample)
    finally:
        for h in hooks:
            h.remove()
    reading = [m for m in convs if id(m) in seen and seen[id(m)][0] is sample]
    feeds = [_feeding(head_in.get(id(h)), reading, seen) for h in heads]
    if any(f is None for f in feeds) or not _one_geometry([m for f in feeds for m in f]):
        return None
    unknowns = sum(m.weight.numel() for f in feeds for m in f)
    return feeds if unknowns <= MAX_UNKNOWNS else None


def _feeding(head_input, convs, seen) -> list[nn.Conv2d] | None:
    if head_input is None or not convs:
        return None
    for conv in convs:  # summed branches: the head reads one depthwise output as it is
        if seen[id(conv)][1] is head_input:
            return [conv]
    outputs = torch.cat([seen[id(m)][1] for m in convs], 1)  # one head reads them all, concatenated
    if outputs.shape == head_input.shape and torch.equal(outputs, head_input):
        return list(convs)
    return None


def _one_geometry(convs: list[nn.Conv2d]) -> bool:
    keys = {(m.kernel_size, m.stride, m.padding, m.dilation, m.in_channels) for m in convs}
    return len(keys) == 1 and len(set(map(id, convs))) == len(convs)


def _mixing(heads: list[nn.Conv2d], feeds: list[list[nn.Conv2d]]) -> torch.Tensor:
    """P as M × J × C: the weight channel c of depthwise conv j has in the heads."""
    blocks = []
    for head, convs in zip(heads, feeds, strict=True):
        dense, channels = head.weight.detach().double().flatten(1), convs[0].in_channels
        blocks += [dense[:, i * channels : (i + 1) * channels] for i in range(len(convs))]
    return torch.stack(blocks, 1)


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N·P) × C × K² unfolded input, float64."""
    z = F.unfold(x.double(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    n, ck, p = z.shape
    return (
        z.view(n, conv.in_channels, ck // conv.in_channels, p)
        .permute(0, 3, 1, 2)
        .reshape(n * p, -1, ck // conv.in_channels)
    )


def _chunks(x: torch.Tensor, conv: nn.Conv2d, y: torch.Tensor):
    """(x, y) split along the batch so that each chunk's unfolded patches stay under ``_CHUNK_ENTRIES``."""
    per_image = y.shape[-2] * y.shape[-1] * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    step = max(1, _CHUNK_ENTRIES // max(per_image, 1))
    for i in range(0, len(x), step):
        yield x[i : i + step], y[i : i + step]


@torch.no_grad()
def fit_depthwise(heads: list[nn.Conv2d], feeds: list[list[nn.Conv2d]], pairs, ridge: float = 1e-5):
    """Solve every depthwise filter of ``feeds`` given the heads (see the module docstring) on ``pairs`` of
    (module input, target output)."""
    convs = [m for f in feeds for m in f]
    conv, mix = convs[0], _mixing(heads, feeds)  # mix: M × J × C
    bias = next((h.bias.detach().double() for h in heads if h.bias is not None), None)
    m, j, c = mix.shape
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    gram = torch.zeros(c * kk, c * kk, dtype=torch.float64)
    cross = torch.zeros(j, c, kk, dtype=torch.float64)
    for x, y in pairs:
        for xs, ys in _chunks(x, conv, y):
            z = _patches(conv, xs)
            flat = z.reshape(len(z), c * kk)
            gram += flat.T @ flat
            target = ys.double().permute(0, 2, 3, 1).reshape(-1, m)
            if bias is not None:
                target = target - bias
            back = (target @ mix.reshape(m, j * c)).view(-1, j, c)
            cross += torch.einsum("pjc,pck->jck", back, z)
    gram, cross = parallel.all_sum(gram), parallel.all_sum(cross)
    q = torch.einsum("mjc,mid->jcid", mix, mix)
    g = torch.einsum("jcid,ckdl->jckidl", q, gram.view(c, kk, c, kk)).reshape(j * c * kk, j * c * kk)
    lam = ridge * float(g.diagonal().mean()) + 1e-12
    theta = torch.linalg.solve(g + lam * torch.eye(len(g), dtype=g.dtype), cross.reshape(-1)).view(j, c, kk)
    for i, dw in enumerate(convs):
        dw.weight.copy_(theta[i].view_as(dw.weight).to(dw.weight.dtype))
