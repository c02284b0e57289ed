r"""Stage 1: layer-wise reconstruction of each rewritten layer, in graph order.

For layer l with original (BN-folded) conv K_l and replacement R_l, on calibration images:

    X_T = input of K_l in the original model,     Y = K_l(X_T)           (the target)
    X_S = input of R_l in the partially compressed student (layers < l already refitted)

and R_l is fitted so that R_l(X_S) ≈ Y: using the student's own inputs makes each layer correct the error that
earlier layers left instead of compounding it. When R_l ends in summed linear 1x1 heads (``linear_heads``), the
heads solve the ridge least squares  min_W ‖F W − Y‖² + λ‖W‖²  over all pixels, with F the heads' inputs
(plus a ones column for the bias), via the normal equations accumulated in float64 — the pointwise part of
dwsep given its depthwise part. When those heads read plain depthwise convs of the layer's input (dwsep), the
depthwise filters are then solved given the heads and the heads again, ``DEPTHWISE_ROUNDS`` times
(``depthwise_fit``). Otherwise, a few Adam steps on the relative MSE. A fit that does not lower the error is
undone. Each layer's relative error ‖R_l(X_S) − Y‖/‖Y‖ is reported before and after.

Under torchrun each rank takes its slice of every calibration batch; FᵀF, FᵀY, the error sums and the gradient
steps' gradients (and the depthwise fit's normal equations) are summed over ranks, so every rank gets the result one process gets on all the batches.

Example:
    >>> rows, heads = reconstruct(teacher, student, ["layer1.0.conv1", ...], batches, RefitSettings("cpu"))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from convslim import parallel
from convslim.finetune.affine import linear_heads, output_conv
from convslim.finetune.depthwise_fit import depthwise_feeds, fit_depthwise
from convslim.finetune.stopping import StopFlag

GRADIENT_STEPS = 60
DEPTHWISE_ROUNDS = 2
DEPTHWISE_BATCHES = 2  # calibration batches (of 128) the depthwise filters are fitted on: 256 images


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_input(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The first input ``model.<name>`` sees when ``model(x)`` runs; the forward stops right there."""
    seen = []

    def hook(mod, args):
        seen.append(args[0].detach())
        raise _Stop

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"layer {name} was not called on the calibration inputs")
    return seen[0]


@dataclass
class RefitSettings:
    """How stage 1 runs: on ``device``; ``refit=False`` only finds the heads (weights fine-tuned already keep
    theirs); ``depthwise_rounds`` alternations of depthwise filters and heads (``depthwise_fit``; 0: heads only)."""

    device: torch.device | str = "cpu"
    progress: bool = False
    stop: StopFlag | None = None
    refit: bool = True
    depthwise_rounds: int = DEPTHWISE_ROUNDS


def reconstruct(teacher, student, names, batches, how: RefitSettings | None = None):
    """Refit every layer in ``names`` in order (see module docstring); returns (report rows, convs by name that
    a BatchNorm after the layer could fold into: its linear heads, else ``affine.output_conv``). ``batches``
    are global: under torchrun each rank uses its slice."""
    how = how or RefitSettings()
    teacher.eval()
    student.eval()
    rows, heads_by_name = [], {}
    show = how.progress and parallel.is_main()
    for name in tqdm(names, desc="stage 1: reconstruct", disable=not show, leave=False):
        if how.stop is not None:
            parallel.agree(how.stop)
            if how.stop.requested:
                break
        module = student.get_submodule(name)
        # the same probe on every rank, so every rank finds the same heads
        probe = capture_input(student, name, batches[0][0][:4].to(how.device))
        heads = linear_heads(module, probe)
        heads_by_name[name] = heads or output_conv(module, probe)
        if how.refit:
            pairs = _layer_pairs(teacher, student, name, batches, how.device)
            feeds = depthwise_feeds(module, heads, probe) if heads and how.depthwise_rounds else None
            rows.append({"layer": name, **_refit(module, heads, feeds, pairs, how.depthwise_rounds)})
    return rows, heads_by_name


def _refit(module: nn.Module, heads, feeds, pairs, rounds: int) -> dict:
    """Fit one layer: heads by least squares (alternating with its depthwise filters when ``feeds``), else
    gradient steps; a fit that does not lower the error is undone."""
    before = relative_error(module, pairs)
    saved = copy.deepcopy(module.state_dict())
    if not heads:
        method = "gradient"
        fit_gradient(module, pairs)
    else:
        method = "least-squares" if feeds is None else f"least-squares, depthwise alternating x{rounds}"
        fit_heads(module, heads, pairs)
        for _ in range(rounds if feeds is not None else 0):
            fit_depthwise(heads, feeds, pairs[:DEPTHWISE_BATCHES])
            fit_heads(module, heads, pairs)
    after = relative_error(module, pairs)
    if not after < before:  # the fit made it worse (ill-conditioned or too few steps): keep the old one
        module.load_state_dict(saved)
        method, after = method + " (undone)", before
    return {"method": method, "error_before": before, "error_after": after}


def _layer_pairs(teacher, student, name, batches, device):
    target_conv = teacher.get_submodule(name)
    pairs = []
    with torch.no_grad():
        for x, _ in batches:
            x = parallel.shard(x)[0].to(device)
            x_t = capture_input(teacher, name, x)
            pairs.append((capture_input(student, name, x), target_conv(x_t)))
    return pairs


@torch.no_grad()
def relative_error(module: nn.Module, pairs) -> float:
    err = sum(float((module(x) - y).pow(2).sum()) for x, y in pairs)
    ref = sum(float(y.pow(2).sum()) for _, y in pairs)
    err, ref = parallel.sum_floats(err, ref)
    return (err / max(ref, 1e-30)) ** 0.5


@torch.no_grad()
def fit_heads(module: nn.Module, heads: list[nn.Conv2d], pairs, ridge: float = 1e-5) -> None:
    """Closed-form ridge least squares for the heads' weights (and one bias) given their inputs."""
    bias_head = next((h for h in heads if h.bias is not None), None)
    gram, cross = None, None
    for x, y in pairs:
        feats = _head_inputs(module, heads, x)
        if bias_head is not None:
            feats.append(torch.ones_like(feats[0][:, :1]))
        f = torch.cat(feats, 1).permute(0, 2, 3, 1).reshape(-1, sum(t.shape[1] for t in feats)).double()
        t = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
        gram = f.T @ f if gram is None else gram + f.T @ f
        cross = f.T @ t if cross is None else cross + f.T @ t
    gram, cross = parallel.all_sum(gram), parallel.all_sum(cross)
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(
        gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), cross
    )
    start = 0
    for h in heads:
        width = h.in_channels
        h.weight.copy_(solution[start : start + width].T.reshape(h.weight.shape).to(h.weight.dtype))
        start += width
        if h.bias is not None:
            h.bias.zero_()
    if bias_head is not None:
        bias_head.bias.copy_(solution[start].to(bias_head.bias.dtype))


def _head_inputs(module, heads, x) -> list[torch.Tensor]:
    seen = {}
    handles = [h.register_forward_pre_hook(lambda m, a: seen.setdefault(id(m), a[0])) for h in heads]
    try:
        module(x)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[id(h)] for h in heads]


def fit_gradient(module: nn.Module, pairs, steps: int = GRADIENT_STEPS, lr: float = 1e-3) -> None:
    """A few Adam steps on Σ‖R(X_S) − Y‖² / Σ‖Y‖², cycling over the calibration batches. Under torchrun the
    sums run over every rank's slice of the batch: each rank's share of the loss is divided by the global
    Σ‖Y‖² and the gradients are summed, so all ranks take the single-process step."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    refs = parallel.all_sum(torch.tensor([float(y.pow(2).sum()) for _, y in pairs], dtype=torch.float64))
    optimizer = torch.optim.Adam(params, lr=lr)
    module.train()
    for step in range(steps):
        x, y = pairs[step % len(pairs)]
        loss = (module(x) - y).pow(2).sum() / max(float(refs[step % len(pairs)]), 1e-30)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parallel.sum_grads(params)
        optimizer.step()
    module.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, device) -> int:
    """Re-estimate running statistics of BatchNorms still in ``model`` (cumulative average); returns how many.
    Under torchrun each rank runs its slice of each batch and BatchNorm2d statistics are summed over ranks;
    other BatchNorms average their per-rank estimates."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    swapped = parallel.sync_batchnorms(model)
    for x, _ in batches:
        model(parallel.shard(x)[0].to(device))
    parallel.plain_batchnorms(swapped)
    for m, (momentum, training) in zip(norms, saved, strict=True):
        if m not in swapped and parallel.active():
            for buf in (m.running_mean, m.running_var):
                buf.copy_(parallel.all_sum(buf) / parallel.world())
        m.momentum = momentum
        m.train(training)
    model.eval()
    return len(norms)
