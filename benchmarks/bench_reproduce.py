"""Do reported speedups survive a stopwatch? (issue 15) For ResNet-20/32: uniform dwsep rank 1 and
``--to auto --target-speedup 1.5 / 2 / 2.5``, the speedup the report gives at batch 1 and 32 against a long-block
timing of the two files it wrote (``original.onnx``, ``model.onnx``: each model alone for ``--block`` seconds per
block, at least ``--rounds`` alternating blocks, medians), and the planner's rounds (predicted vs measured) on a
cold cache and then a warm one. A row whose two speedups differ by more than 10 % is marked.

Run from the repository root (needs ../shared/data), on a quiet machine:
    python benchmarks/bench_reproduce.py --models resnet20,resnet32
    python benchmarks/bench_reproduce.py --quick       # smoke run: resnet20, dwsep only, short blocks
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model, markdown_table

from convslim import compress
from convslim.runtime import TimingSettings, compare, measure_models

AGREE = 0.10


def long_block(out: Path, example, batch_sizes, args) -> dict:
    """Speedup of model.onnx over original.onnx per batch size, timed alone in long alternating blocks."""
    settings = TimingSettings(seconds=0.0, block_seconds=args.block, min_rounds=args.rounds, min_runs=1)
    models = {"original": out / "original.onnx", "compressed": out / "model.onnx"}
    timed = measure_models(models, example, batch_sizes, settings=settings)
    return {b: compare(t["original"], t["compressed"]) for b, t in timed.items()}


def run_one(name: str, label: str, args, calibration, cache: Path, **kwargs) -> list[dict]:
    example = (torch.randn(1, 3, 32, 32),)
    os.environ["CONVSLIM_CACHE_DIR"] = str(cache)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        result = compress(
            cifar_model(name),
            example,
            calibration=calibration,
            out_dir=out,
            batch_sizes=args.batch_sizes,
            **kwargs,
        )
        stopwatch = long_block(out, example, args.batch_sizes, args)
    rows = []
    for batch, check in stopwatch.items():
        reported = result.report.latency_tables()["ort_cpu"][batch]
        ratio = reported["speedup"] / check["speedup"]
        rows.append(
            {
                "model": name,
                "setting": label,
                "batch": batch,
                "reported": f"{reported['speedup']:.2f} ({reported['speedup_iqr'][0]:.2f}-{reported['speedup_iqr'][1]:.2f}, {reported['runs']} runs)",
                "long blocks": f"{check['speedup']:.2f} ({check['speedup_iqr'][0]:.2f}-{check['speedup_iqr'][1]:.2f}, {check['rounds']} rounds)",
                "agree": "yes" if abs(ratio - 1) <= AGREE else f"NO ({ratio:.2f})",
            }
        )
    planning = result.report.planning or {}
    for r in planning.get("rounds", []):
        print(json.dumps({"model": name, "setting": label, **r}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet32")
    parser.add_argument("--targets", default="1.5,2,2.5")
    parser.add_argument("--block", type=float, default=3.0, help="seconds per block of the stopwatch timing")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of the stopwatch timing")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet20, dwsep r1, short blocks")
    parser.add_argument("--no-uniform", action="store_true", help="skip the uniform dwsep r1 row")
    parser.add_argument(
        "--repeat", type=int, default=1, help="cold+warm pairs per target, each on a new cache"
    )
    args = parser.parse_args()
    if args.quick:
        args.models, args.targets, args.block, args.rounds, args.batch_sizes = "resnet20", "", 0.1, 2, "2"
    args.batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    torch.set_num_threads(2)
    calibration = cifar_arrays("train10k")[0][:64]
    rows = []
    for name in args.models.split(","):
        if not args.no_uniform:
            with tempfile.TemporaryDirectory(prefix="convslim-cache-") as cache:
                rows += run_one(name, "dwsep r1", args, calibration, Path(cache), to="dwsep", rank=1)
        targets = [float(t) for t in args.targets.split(",") if t]
        for target, repeat in ((t, r) for t in targets for r in range(args.repeat)):
            with tempfile.TemporaryDirectory(prefix="convslim-cache-") as cache:
                for state in ("cold", "warm"):  # a fresh cache, then the same one filled
                    label = (
                        f"auto {target}x ({state} cache{f', run {repeat + 1}' if args.repeat > 1 else ''})"
                    )
                    rows += run_one(
                        name, label, args, calibration, Path(cache), to="auto", target_speedup=target
                    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
