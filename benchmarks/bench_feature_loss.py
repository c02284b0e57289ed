"""Phase A's relative feature error, ‖s − t‖² / ‖t‖², as the library computes it (``losses.relative_mse``, its
own autograd function) against the way it did before (``F.mse_loss`` over mean(t²), the gradient copied back
into channels-last): forward and backward on random channels-last tensors of ResNet-20's three stage shapes at
batch 128, alternating blocks, medians. README "Where the minutes go"; RESULTS 117.

    python benchmarks/bench_feature_loss.py --rounds 7 --calls 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine_record

from convslim.core.heap import retained_heap
from convslim.finetune.losses import relative_mse

SHAPES = ((128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8))


def mse_over_mean(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The formula through ``F.mse_loss``, its gradient returned channels-last (the library before b97f343)."""
    s.register_hook(lambda g: g.contiguous(memory_format=torch.channels_last))
    return F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)


def _block_ms(loss, s0: torch.Tensor, t: torch.Tensor, calls: int) -> float:
    s = s0.clone().requires_grad_(True)
    start = time.perf_counter()
    for _ in range(calls):
        loss(s, t).backward()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    losses = {"relative_mse": relative_mse, "F.mse_loss / mean(t²)": mse_over_mean}
    result = {}
    with retained_heap(True):  # as the fine-tune runs: freed blocks kept, not faulted in afresh
        for shape in SHAPES:
            result["×".join(map(str, shape))] = _time_shape(shape, losses, args)
    print(json.dumps({"ms_forward_backward": result, "run": machine_record()}, indent=1))


def _time_shape(shape, losses: dict, args) -> dict:
    s0, t = (torch.randn(shape).contiguous(memory_format=torch.channels_last) for _ in range(2))
    ms: dict[str, list[float]] = {k: [] for k in losses}
    for _ in range(args.rounds):
        for key, loss in losses.items():
            ms[key].append(_block_ms(loss, s0, t, args.calls))
    return {k: round(statistics.median(v), 2) for k, v in ms.items()}


if __name__ == "__main__":
    main()
