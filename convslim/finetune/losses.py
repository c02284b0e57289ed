r"""The distillation losses, written so their gradients keep the activations' memory layout.

Relative feature error (phase A's block loss, phase B's optional feature term):

    L_rel(s, t) = ‖s − t‖² / ‖t‖²       (means over all elements; ‖t‖² is a constant: no gradient)

Knowledge distillation on N×K logits (Hinton et al. 2015), with cross-entropy when labels are given:

    L_kd = T² · KL(softmax(t/T) ‖ softmax(s/T)) + w_ce · CE(s, y)

or, ``kind="mse"``, the logits themselves matched (Kim et al. 2021, "Comparing Kullback-Leibler divergence and
mean squared error loss in knowledge distillation"; the limit of T² · KL as T → ∞ up to a factor 1/(2K) and
the logits' mean), summed over the K classes and averaged over the batch:

    L_mse = (1/N) Σ_n ‖s_n − t_n‖² + w_ce · CE(s, y)

L_rel runs as its own autograd function, for two reasons. Layout: the gradient of a mean is a broadcast
scalar, and the elementwise ops of its backward return it in the default (NCHW) layout even when ``s`` is
channels-last; a BatchNorm backward that then meets an NCHW gradient and an NHWC input takes a slow generic
path (on ResNet-20's ×2 plan a block-wise step ran 348 ms instead of 286 ms, batch 128, 2 cores), so the
gradient comes back in ``s``'s layout. Memory: these tensors are large and the arithmetic trivial, so the
time is the passes over them; ``F.mse_loss`` and its backward (and a layout copy) make several, the function
three (s − t, two norms) forward and one backward: 2.7-4.1 against 5.5-6.7 ms at 128×16×32×32, 0.9-1.0 against
1.5-1.7 ms at 128×64×8×8 (forward and backward, channels-last, 2 threads; ``benchmarks/bench_feature_loss.py``).

Example:
    >>> loss = relative_mse(student_features, teacher_features) + kd_loss(s_logits, t_logits, y, 4.0, 1.0, "mse")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _RelativeSquaredError(torch.autograd.Function):
    """L_rel(s, t) = ‖s − t‖² / ‖t‖² (module docstring) in one subtraction and two norms forward and one
    multiplication backward, ∂L/∂s = 2 (s − t) / ‖t‖², returned in ``s``'s memory format and dtype."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        diff = s - t
        # the means' floor of 1e-12 on ‖t‖²/n, as sums
        reference = torch.linalg.vector_norm(t).square().clamp_min(1e-12 * t.numel())
        ctx.save_for_backward(diff, reference)
        ctx.layout = torch.channels_last if _is_channels_last(s) else torch.contiguous_format
        ctx.dtype = s.dtype
        return torch.linalg.vector_norm(diff).square() / reference

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        diff, reference = ctx.saved_tensors
        out = (diff * (2 * grad / reference)).to(ctx.dtype)
        return out.contiguous(memory_format=ctx.layout), None


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def relative_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """‖s − t‖² / ‖t‖² (the ratio of the two means); ``t`` is a target (no gradient flows into it)."""
    return _RelativeSquaredError.apply(s, t.detach())


def kd_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor | None,
    temperature: float,
    ce_weight: float,
    kind: str,
):
    """KD (``kind`` "kl" at ``temperature``, or "mse" on the logits) plus ``ce_weight`` · CE on labels ``y``
    for N×K logits; relative MSE otherwise."""
    if s.dim() != 2:
        return relative_mse(s, t)
    if kind == "mse":
        loss = (s - t.detach()).pow(2).sum(1).mean()
    else:
        log_s = F.log_softmax(s / temperature, 1)
        log_t = F.log_softmax(t.detach() / temperature, 1)
        loss = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2
    if y is not None and ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(s, y)
    return loss
