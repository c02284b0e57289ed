"""Time a `convslim compress` output folder again: its original.onnx against model.onnx on ORT CPU, in rounds.

A compress run's report times the pair once, right after fine-tuning; on a noisy machine (the report warns when
a timing's spread passes 10 %) timing the same files again later, in several rounds, tells the model's speed
from the machine's noise. Each round is one ``measure_speed`` call (alternating blocks, medians).

Run from the repository root, with nothing else running:
    python benchmarks/time_output.py OUT_DIR --rounds 3 --seconds 20 [--input-shape 1,3,32,32] [--threads 1]

``--threads 1`` times with one ORT thread per session, as the planner's rounds do under ``--plan-threads 1``
(``timing.STEADY_THREADS``; by default they take ORT's own).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from convslim.runtime.measure import measure_speed
from convslim.runtime.timing import TimingSettings

KEYS = ("speedup", "speedup_iqr", "spread_original", "spread_compressed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a compress --out folder (original.onnx, model.onnx)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="least timing time per batch size and round"
    )
    parser.add_argument("--input-shape", default="1,3,32,32", help="one input's shape, batch 1")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")
    args = parser.parse_args()
    example = (torch.randn(*(int(v) for v in args.input_shape.split(","))),)
    batches = [int(b) for b in args.batches.split(",")]
    for round_ in range(args.rounds):
        timed = measure_speed(
            args.out / "original.onnx",
            args.out / "model.onnx",
            example,
            batches,
            settings=TimingSettings(seconds=args.seconds, threads=args.threads),
        )
        row = {b: {k: _rounded(e[k]) for k in KEYS} for b, e in timed.items()}
        print(json.dumps({"round": round_ + 1, **row}), flush=True)


def _rounded(value):
    return [round(v, 3) for v in value] if isinstance(value, list | tuple) else round(value, 3)


if __name__ == "__main__":
    main()
