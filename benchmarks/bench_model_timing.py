"""How repeatable a whole-model speedup is under different block lengths: a compress output's original.onnx
against its model.onnx, timed again and again by ``runtime.timing`` (alternating blocks, the speedup the median
of the per-round ratios) with each setting in turn, interleaved so that every setting sees the same machine.
Prints every speedup and, per setting, the median, the range and the relative spread over the repeats.

Run from the repository root, nothing else running:
    python benchmarks/bench_model_timing.py OUT_DIR --repeats 8 --blocks 0.75,0.1 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import machine_record

from convslim.runtime.measure import measure_speed
from convslim.runtime.timing import TimingSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a compress --out folder (original.onnx, model.onnx)")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--blocks", default="0.75,0.1", help="block lengths (s) to compare")
    parser.add_argument("--seconds", type=float, default=3.0, help="least time per timing (the report's: 3)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    example = (torch.randn(1, 3, 32, 32),)
    blocks = [float(b) for b in args.blocks.split(",")]
    speedups: dict[float, list[float]] = {b: [] for b in blocks}
    for repeat in range(args.repeats):
        for block in blocks if repeat % 2 == 0 else blocks[::-1]:
            settings = TimingSettings(seconds=args.seconds, block_seconds=block)
            timed = measure_speed(
                args.out / "original.onnx", args.out / "model.onnx", example, [args.batch], "cpu", settings
            )[str(args.batch)]
            speedups[block].append(timed["speedup"])
            print(f"repeat {repeat} block {block}s: {timed['speedup']:.3f}x ({timed['rounds']} rounds)")
    summary = {
        f"block {b}s": {
            "median": round(statistics.median(s), 3),
            "range": [round(min(s), 3), round(max(s), 3)],
            "relative spread (max/min - 1)": round(max(s) / min(s) - 1, 3),
        }
        for b, s in speedups.items()
    }
    print(json.dumps({"machine": machine_record(), "seconds": args.seconds, **summary}, indent=1))


if __name__ == "__main__":
    main()
