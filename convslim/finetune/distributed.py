r"""Fine-tuning under torchrun: one process per device, the process group from the environment.

``torchrun --nproc_per_node N -m convslim ...`` (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) starts N copies; ``init_from_env`` joins them (gloo on CPU, nccl on CUDA, where each
process takes ``cuda:LOCAL_RANK``). Everything else asks the default process group, so one process without a
launcher runs the same code with every collective a no-op.

What is split, and what every rank agrees on:
- data: every rank draws the same global batch order (one shared seed) and keeps its slice ``x[rank::N]``;
  augmentation draws from a per-rank generator. ``batch_size`` is the global batch, so a recipe means the same
  on any number of ranks.
- stage 1: the normal equations Σ FᵀF, Σ FᵀY and the error sums are summed over ranks (``all_sum``), so the least
  squares is the one a single process solves on all calibration samples, up to float64 summation order.
- stage 2: DistributedDataParallel averages gradients; the BatchNorms used in training synchronise their batch
  statistics (``SyncBatchNorm`` on CUDA; on CPU, where torch's SyncBatchNorm refuses gloo, ``GlobalBatchNorm2d``).
- stopping (``agree``): one all-reduce per step carries [the signal any rank caught, rank 0's elapsed seconds];
  every rank runs its budget, LR schedule and validation points on rank 0's clock, so all take the same steps
  and none waits for a collective another rank never reaches.
- validation sums hits over ranks, so the best-weights choice is the same everywhere; only rank 0 shows
  progress, exports, verifies and writes.

Example:
    >>> device = init_from_env("cpu")     # under torchrun: joins the group; alone: returns "cpu"
    >>> x, y = shard(x, y)                # this rank's slice of a global batch
    >>> gram = all_sum(f.T @ f)           # summed over ranks in place
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from convslim.errors import UsageError

TIMEOUT = timedelta(minutes=30)  # a collective no other rank reaches fails after this instead of hanging


def init_from_env(device: str | None = None) -> str | None:
    """Join the process group a launcher describes (WORLD_SIZE > 1); return the device this rank uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE={world} but {', '.join(missing)} unset; launch with torchrun")
    cuda = device is not None and device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise UsageError("--device cuda under torchrun, but torch sees no GPU; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it); alone, ``tensor`` unchanged."""
    if not active():
        return tensor
    if tensor.device == _comm_device():
        dist.all_reduce(tensor)
        return tensor
    moved = tensor.to(_comm_device())
    dist.all_reduce(moved)
    return tensor.copy_(moved)


def sum_floats(*values: float) -> list[float]:
    """Each value summed over ranks (one collective)."""
    if not active():
        return list(values)
    return all_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def sum_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over ranks in place (one flat collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not active() or not grads:
        return
    flat = all_sum(torch.cat([g.reshape(-1) for g in grads]))
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def shard(x: torch.Tensor, y: torch.Tensor | None = None):
    """This rank's slice ``[rank::world]`` of a global batch (and its labels)."""
    if not active():
        return x, y
    r, n = rank(), world()
    return x[r::n], (None if y is None else y[r::n])


def agree(stop, budget=None) -> None:
    """Every rank stops if any caught a signal, and runs ``budget`` on rank 0's clock (see module docstring)."""
    if not active():
        return
    own = signal.Signals[stop.signal_name.split()[0]].value if stop.requested and stop.signal_name else 0
    clock = budget.own_elapsed() if budget is not None and is_main() else 0.0
    both = torch.tensor([float(own), clock], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    if both[0] > 0 and not stop.requested:
        stop.requested = True
        stop.signal_name = f"{signal.Signals(int(both[0])).name} on another rank"
    if budget is not None:
        budget.shared_elapsed = float(both[1])


def broadcast_object(value):
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; the gradient of a loss summed over ranks w.r.t. each rank's x is Σ_ranks ∂L/∂y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_sum(x.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_sum(grad.clone())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are the global batch's, summed over ranks with a differentiable
    all-reduce: torch's SyncBatchNorm raises on CPU tensors, so CPU (gloo) runs use this. Same parameters and
    buffers as ``nn.BatchNorm2d``; in eval mode, or alone, it is exactly ``nn.BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([x.sum((0, 2, 3)), x.pow(2).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean, var = stats[:c] / n, (stats[c : 2 * c] / n - (stats[:c] / n) ** 2).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        shape = (1, c, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def sync_batchnorms(model: nn.Module) -> list[nn.Module]:
    """Make the ``nn.BatchNorm2d`` of ``model`` synchronise across ranks, in place (same parameters and buffers):
    ``SyncBatchNorm`` on CUDA, ``GlobalBatchNorm2d`` on CPU. Returns what changed, for ``plain_batchnorms``."""
    if not active():
        return []
    swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for m in swapped:
        if m.weight is not None and m.weight.device.type == "cuda":
            m.__class__ = nn.SyncBatchNorm
            m.process_group = None
        else:
            m.__class__ = GlobalBatchNorm2d
    return swapped


def plain_batchnorms(swapped: list[nn.Module]) -> None:
    """Undo ``sync_batchnorms``."""
    for m in swapped:
        m.__class__ = nn.BatchNorm2d


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel over the trainable parameters; alone, ``model`` itself.
    Wrap only once the structure is final (after BatchNorm wrappers are in place)."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    # buffers need no broadcast each step: synchronised BatchNorms keep them equal on every rank
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
