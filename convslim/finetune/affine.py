r"""Linear heads of a replacement module, and training with BatchNorm that is folded away afterwards.

Heads. Many replacements end in 1x1 convs whose outputs are summed (dwsep: its pointwise convs). Then the
output is linear in the heads' weights given their inputs F_h:  y = Σ_h W_h F_h + b,  which stage 1 solves in
closed form. ``linear_heads`` finds such convs generically — 1x1, stride 1, no padding, groups 1, called once,
out_channels = the module's — and keeps them only if their outputs really sum to the module's output on a
sample; otherwise the form gets gradient steps.

Training BN. BN was folded before rewriting, so the student trains without normalisation, which is slow from a
damaged start. ``TrainNorm`` puts a BatchNorm after a replacement, initialised to the identity in eval mode
(running μ, σ² from calibration outputs, γ = √(σ²+ε), β = μ), so training sees batch statistics. Afterwards
``fold_norm`` absorbs the eval transform a·y + b (a = γ/√(σ²+ε), b = β − μ·a) into the heads:
W_h ← a·W_h, b_head ← a·b_head + b, leaving the module structurally the one the plan built. Forms without
linear heads fold it into the conv that produces their output (``output_conv``); without BN, AdamW at the
learning rates dwsep needs drove a spatial ResNet-20 from 90 % to 10 % top-1.

Example:
    >>> heads = linear_heads(sep, x)          # [sep.pointwise[0]] for a rank-1 dwsep
    >>> wrapped = TrainNorm(sep, heads, 32); ...train...; sep = fold_norm(wrapped)
"""

from __future__ import annotations

import torch
from torch import nn

from convslim import parallel
from convslim.core import set_submodule


def is_plain_1x1(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
    )


@torch.no_grad()
def linear_heads(module: nn.Module, sample: torch.Tensor, rtol: float = 1e-4) -> list[nn.Conv2d] | None:
    """The 1x1 convs whose summed outputs are ``module``'s output on ``sample``, or None."""
    candidates = [m for m in module.modules() if is_plain_1x1(m)]
    if not candidates:
        return None
    out, outputs = _run_recording(module, candidates, sample)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return None
    called = [m for m in candidates if len(outputs[id(m)]) == 1 and m.out_channels == out.shape[1]]
    for heads in (called, called[-1:]):
        if heads and _sums_to(out, [outputs[id(m)][0] for m in heads], rtol):
            return heads
    return None


@torch.no_grad()
def output_conv(module: nn.Module, sample: torch.Tensor) -> list[nn.Conv2d] | None:
    """``[conv]`` for the one conv whose output *is* ``module``'s output on ``sample`` (spatial's 1×Kw conv), or
    None. A BatchNorm after a module without linear heads folds into it: a per-channel affine map folds into
    any conv's output rows whatever its kernel or groups."""
    convs = [m for m in module.modules() if type(m) is nn.Conv2d]
    out, outputs = _run_recording(module, convs, sample)
    if not isinstance(out, torch.Tensor):
        return None
    for m in reversed(convs):
        if len(outputs[id(m)]) == 1 and _sums_to(out, outputs[id(m)], 0.0):
            return [m]
    return None


def _run_recording(module: nn.Module, convs: list[nn.Conv2d], sample: torch.Tensor):
    """``module(sample)`` and, by ``id``, every output each of ``convs`` produced during that call."""
    outputs: dict[int, list[torch.Tensor]] = {id(m): [] for m in convs}
    handles = [m.register_forward_hook(lambda mod, a, out: outputs[id(mod)].append(out)) for m in convs]
    try:
        return module(sample), outputs
    finally:
        for h in handles:
            h.remove()


def _sums_to(out: torch.Tensor, parts: list[torch.Tensor], rtol: float) -> bool:
    total = torch.stack(parts).sum(0)
    return total.shape == out.shape and float((total - out).norm()) <= rtol * float(out.norm()) + 1e-12


class TrainNorm(nn.Module):
    """``bn(inner(x))`` while training; see the module docstring. ``recording`` collects output moments."""

    def __init__(self, inner: nn.Module, heads: list[nn.Conv2d], channels: int):
        super().__init__()
        self.inner = inner
        self.bn = nn.BatchNorm2d(channels).to(heads[0].weight.device)
        self.heads = heads  # a plain list: they are registered once, inside ``inner``
        self.recording = False
        self._moments = [0, 0.0, 0.0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if self.recording:
            dims = (0, 2, 3)
            self._moments[0] += y.numel() // y.shape[1]
            self._moments[1] = self._moments[1] + y.double().sum(dims)
            self._moments[2] = self._moments[2] + y.double().pow(2).sum(dims)
            return y
        return self.bn(y)

    @torch.no_grad()
    def set_identity_from_moments(self) -> None:
        n, s1, s2 = self._moments
        if parallel.active():  # every rank starts from the identity of the global calibration batch
            n = int(parallel.sum_floats(float(n))[0])
            s1, s2 = (parallel.all_sum(torch.as_tensor(t, dtype=torch.float64)) for t in (s1, s2))
        if not n:
            return
        mean = s1 / n
        var = (s2 / n - mean**2).clamp_min(1e-8)
        bn = self.bn
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_((var + bn.eps).sqrt().float())
        bn.bias.copy_(mean.float())
        self._moments = [0, 0.0, 0.0]


@torch.no_grad()
def fold_norm(wrapper: TrainNorm) -> nn.Module:
    """Absorb the BN's eval transform into the heads; return the (now plain) inner module."""
    bn = wrapper.bn
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    shift = bn.bias.double() - bn.running_mean.double() * scale
    with_bias = [h for h in wrapper.heads if h.bias is not None]
    for h in wrapper.heads:
        h.weight.copy_((h.weight.double() * scale.view(-1, 1, 1, 1)).to(h.weight.dtype))
        if h.bias is not None:
            h.bias.copy_((h.bias.double() * scale).to(h.bias.dtype))
    if with_bias:
        with_bias[0].bias.add_(shift.to(with_bias[0].bias.dtype))
    return wrapper.inner


def can_fold(heads: list[nn.Conv2d] | None) -> bool:
    """A BN can be folded into heads only if one of them has a bias (adding one would change the plan's
    state_dict keys, which ``load_compressed`` must match)."""
    return bool(heads) and any(h.bias is not None for h in heads)


def wrap_all(
    model: nn.Module, heads_by_name: dict[str, list[nn.Conv2d] | None], batches, device
) -> list[str]:
    """Wrap every layer whose heads can take a folded BN; set each BN to the identity from ``batches`` (global:
    under torchrun each rank records its slice and the moments are summed)."""
    wrapped = []
    for name, heads in heads_by_name.items():
        if can_fold(heads):
            inner = model.get_submodule(name)
            set_submodule(model, name, TrainNorm(inner, heads, heads[0].out_channels))
            wrapped.append(name)
    if not wrapped:
        return wrapped
    wrappers = [model.get_submodule(n) for n in wrapped]
    for w in wrappers:
        w.recording = True
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(parallel.shard(x)[0].to(device))
    for w in wrappers:
        w.recording = False
        w.set_identity_from_moments()
    return wrapped


def unwrap_all(model: nn.Module, names: list[str]) -> None:
    for name in names:
        set_submodule(model, name, fold_norm(model.get_submodule(name)))
