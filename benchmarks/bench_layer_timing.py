"""How repeatable the planner's per-layer timings are: each dwsep candidate of three ResNet layers timed against
its original several times, by ``convslim.planner.latency.time_pair`` (20 ms blocks alternating at least four
rounds, no cap on the runs, the ratio the median of the per-round ratios; cache v5) and by the method before it
(one block per model once 200 runs are reached, the ratio of the overall medians; v4), interleaved so that both
see the same machine. Prints every ratio and, per candidate and method, the range over the repeats.

Run from the repository root, nothing else running:
    python benchmarks/bench_layer_timing.py --model resnet32 --repeats 4
"""

from __future__ import annotations

import argparse
import json

import torch
from common import cifar_model, machine_record

from convslim import prepare
from convslim.convert.dwsep import convert_dwsep
from convslim.planner.latency import time_pair
from convslim.runtime.export import export_layer
from convslim.runtime.targets import available_target
from convslim.runtime.timing import TimingSettings, time_sessions

LAYERS = {  # name → its input at batch 32 (CIFAR ResNets: one per stage)
    "layer1.0.conv1": (32, 16, 32, 32),
    "layer2.1.conv1": (32, 32, 16, 16),
    "layer3.1.conv1": (32, 64, 8, 8),
}


def unpaired_ratio(conv, candidate, x: torch.Tensor, target, seconds: float) -> float:
    """The v4 method: 200 runs at most per model, so a fast layer finishes in one block each."""
    sessions = {
        name: target.session(target.deploy_bytes(export_layer(module, x)))
        for name, module in (("original", conv), ("candidate", candidate))
    }
    settings = TimingSettings(seconds=seconds, min_runs=7, max_runs=200, warmup=2, min_rounds=1)
    timed = time_sessions(sessions, [x.numpy()], settings)
    return timed["candidate"].median_s / timed["original"].median_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--ranks", default="1,3")
    parser.add_argument("--seconds", type=float, default=0.3, help="per timing (the planner's default)")
    args = parser.parse_args()
    prepared = prepare(cifar_model(args.model), (torch.randn(1, 3, 32, 32),))
    modules = dict(prepared.traced.module.named_modules())
    target = available_target("cpu")
    ratios: dict[str, list[float]] = {}
    for layer, shape in LAYERS.items():
        x = torch.randn(*shape)
        for _ in range(args.repeats):
            for rank in (int(r) for r in args.ranks.split(",")):
                candidate = convert_dwsep(modules[layer], rank)
                paired = time_pair(modules[layer], candidate, x, target, args.seconds)["ratio"]
                unpaired = unpaired_ratio(modules[layer], candidate, x, target, args.seconds)
                ratios.setdefault(f"{layer} rank {rank} paired (v5)", []).append(round(paired, 3))
                ratios.setdefault(f"{layer} rank {rank} unpaired (v4)", []).append(round(unpaired, 3))
    for key, values in ratios.items():
        print(f"{key}: {values}  range {min(values):.3f}-{max(values):.3f}")
    print(json.dumps({"machine": machine_record(), "ratios": ratios}))


if __name__ == "__main__":
    main()
