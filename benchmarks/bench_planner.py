"""Budgeted planning vs uniform single-form settings: predicted vs measured ORT-CPU speedup, output error, top-1.

For each model and target speedup: plan (``--to auto``; timed cold or warm depending on the cache), apply,
export, measure the whole-model speedup at batch 32 as ``compress`` does; then the uniform baselines
(``dwsep`` rank 1 by default). Output error is the relative L2 of the logits vs the BN-folded original on the
first 500 validation images; calibration (damage probes) is 64 training images; top-1 is on all of
``cifar10_val5k.npz`` (no fine-tuning here). Timings are noisy on a shared machine: the report's spread
warnings say when.

Example:
    python benchmarks/bench_planner.py --models resnet20 --targets 2.5
"""

from __future__ import annotations

import argparse
import time

import torch
from common import cifar_arrays, cifar_model, markdown_table, top1

from convslim.api import compress

UNIFORM = {"dwsep r1": ("dwsep", {"rank": 1}), "dwsep r2": ("dwsep", {"rank": 2})}


def run_one(model, example, val, calibration, label: str, **kwargs) -> dict:
    x, y = val
    t0 = time.perf_counter()
    result = compress(model, example, batch_sizes=(32,), calibration=calibration, **kwargs)
    report = result.report
    with torch.no_grad():
        reference, output = (m(x[:500]).double() for m in (result.prepared.traced.module, result.model))
    planning = report.planning or {}
    return {
        "setting": label,
        "predicted": planning.get("predicted_speedup"),
        "measured": report.latency_tables()["ort_cpu"]["32"]["speedup"],
        "spread_warn": "warning" in report.latency_tables()["ort_cpu"]["32"],
        "rel_l2": float((output - reference).norm() / reference.norm()),
        "top1": top1(result.model, x, y),
        "plan_s": planning.get("planning_s"),
        "cache_hits/misses": f"{planning.get('cache_hits')}/{planning.get('cache_misses')}"
        if planning
        else "",
        "total_s": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--targets", default="1.5,2,2.5,3")
    parser.add_argument("--uniform", default="dwsep r1", help="comma list of: " + ", ".join(UNIFORM))
    parser.add_argument("--to", default="auto")
    args = parser.parse_args()
    val = cifar_arrays("val5k")
    calibration = cifar_arrays("train10k")[0][:64]
    example = (torch.randn(1, 3, 32, 32),)
    for name in args.models.split(","):
        model = cifar_model(name)
        rows = [
            {
                "setting": "original",
                "predicted": None,
                "measured": 1.0,
                "spread_warn": False,
                "rel_l2": 0.0,
                "top1": top1(model, *val),
                "plan_s": None,
                "cache_hits/misses": "",
                "total_s": 0.0,
            }
        ]
        for target in (float(t) for t in args.targets.split(",")):
            rows.append(
                run_one(
                    model,
                    example,
                    val,
                    calibration,
                    f"{args.to} ×{target}",
                    to=args.to,
                    target_speedup=target,
                )
            )
            print(rows[-1], flush=True)
        for label in (u.strip() for u in args.uniform.split(",") if u.strip()):
            form, options = UNIFORM[label]
            rows.append(run_one(model, example, val, calibration, label, to=form, **options))
            print(rows[-1], flush=True)
        print(f"\n## {name}\n\n" + markdown_table(rows))


if __name__ == "__main__":
    main()
