"""Efficient nets under ``--to auto``: ORT-CPU speedups of MobileNetV2-, EfficientNet-B0- and ResNeXt-50-like
layouts (random weights; speed does not depend on them) at ``--target-speedup`` 1.3 and 1.5, timed at batch 1
and 32, with a per-layer table of which form won where (or the planner's verdict that nothing gets faster).

Run from the repository root on a quiet machine (timings on a shared one mean little):

    python benchmarks/bench_efficient.py                     # ImageNet layouts at 224x224
    python benchmarks/bench_efficient.py --tiny              # the zoo's tiny layouts: checks the script runs
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import convslim
from convslim.api import prepare
from convslim.models.blocks import randomize_bn_
from convslim.models.zoo import build
from convslim.models.zoo_mobile import IMAGENET
from convslim.planner import LatencyCache, plan_to_budget

TINY_NAMES = {"mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "efficientnet", "resnext50": "resnext"}


def model_for(name: str, tiny: bool) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if tiny:
        return build(TINY_NAMES[name])
    torch.manual_seed(0)
    return randomize_bn_(IMAGENET[name]()), (1, 3, 224, 224)


def run(name: str, target: float, args) -> None:
    model, shape = model_for(name, args.tiny)
    x = torch.randn(shape)
    with tempfile.TemporaryDirectory() as cache:
        plan = plan_to_budget(
            prepare(model, x),
            "auto",
            target_speedup=target,
            batch=args.plan_batch,
            seconds=args.seconds,
            cache=LatencyCache(cache) if args.cold else None,
        )
    result = convslim.compress(model, x, plan=plan, batch_sizes=args.batch_sizes)
    speed = result.report.latency_tables().get("ort_cpu", {})
    shown = ", ".join(f"batch {b}: {v['speedup']:.2f}x" for b, v in speed.items() if "speedup" in v)
    p = plan.planning
    print(f"\n## {name} --target-speedup {target}: {len(plan.rewritten)}/{len(plan.layers)} convs rewritten")
    print(f"measured ORT-CPU speedup {shown}; planner {p['predicted_speedup']:.2f}x at batch {p['batch']}")
    print(f"parity {'ok' if result.report.passed else 'FAILED'}; MACs {p['predicted_macs_fraction']:.1%}")
    if p.get("verdict"):
        print(f"verdict: {p['verdict']}")
    print("| layer | original ms | fastest candidate | its time / original | chosen |")
    print("|---|---|---|---|---|")
    for r in p["layer_timings"]:
        print(
            f"| {r['layer']} | {r['original_ms']:.4f} | {r['fastest']} | {r['fastest_ratio']:.2f} | "
            f"{r['chosen'] or 'kept'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny layouts and timings: a smoke run")
    parser.add_argument("--models", default=",".join(IMAGENET), help="comma list of " + ", ".join(IMAGENET))
    parser.add_argument("--targets", default="1.3,1.5")
    parser.add_argument("--cold", action="store_true", help="a fresh latency cache per run")
    args = parser.parse_args()
    args.plan_batch = 2 if args.tiny else 32
    args.seconds = 0.01 if args.tiny else 0.3
    args.batch_sizes = (1, 2) if args.tiny else (1, 32)
    args.cold = args.cold or args.tiny  # a smoke run must not fill the user's cache
    for name in args.models.split(","):
        for target in (float(t) for t in args.targets.split(",")):
            run(name, target, args)


if __name__ == "__main__":
    main()
