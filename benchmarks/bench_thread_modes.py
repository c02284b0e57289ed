"""How steady a compress output's speedup is at ORT's default threads and at one thread, timed side by side.

Four sessions (original.onnx and model.onnx, each with ORT's default intra-op threads and with one) alternate in
short blocks (A B C D, D C B A, ...: the library's timer, ``runtime.timing.time_sessions``) for ``--seconds``; every ``--window`` rounds the script prints each session's
median run and the two speedups. A shared machine whose second core is taken for a while shows it as a window
where the default threads' ratio drops and the one-thread ratio does not (README, "Planning on what it
measures"; ``runtime.timing.STEADY_THREADS``).

Run from the repository root, with nothing else running:
    python benchmarks/bench_thread_modes.py OUT_DIR --seconds 180 [--batch 32] [--input-shape 3,32,32]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from convslim.runtime.sessions import open_session
from convslim.runtime.timing import Timing, TimingSettings, random_inputs, time_sessions

CPU = ["CPUExecutionProvider"]


def windows(timings: dict[str, Timing], size: int) -> list[dict]:
    """Per window of ``size`` rounds (one block per session each): each session's median ms and the speedup at
    each thread count."""
    rounds = min(len(t.blocks) for t in timings.values())
    out = []
    for start in range(0, rounds, size):
        ms = {
            name: 1e3 * statistics.median(x for block in t.blocks[start : start + size] for x in block)
            for name, t in timings.items()
        }
        speedup = {th: ms[f"original {th}"] / ms[f"model {th}"] for th in ("default", "1 thread")}
        out.append({"ms": {n: round(v, 3) for n, v in ms.items()}, "speedup": speedup})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a compress --out folder (original.onnx, model.onnx)")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--block", type=float, default=0.1, help="seconds per block")
    parser.add_argument("--window", type=int, default=20, help="rounds per printed window")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-shape", default="3,32,32", help="one input's shape, without the batch")
    args = parser.parse_args()
    sessions = {
        f"{name} {label}": open_session(args.out / f"{name}.onnx", CPU, threads)
        for name in ("original", "model")
        for label, threads in (("default", None), ("1 thread", 1))
    }
    example = (torch.zeros(1, *(int(v) for v in args.input_shape.split(","))),)
    settings = TimingSettings(seconds=args.seconds, block_seconds=args.block)
    found = windows(time_sessions(sessions, random_inputs(example, args.batch), settings), args.window)
    for row in found:
        print(json.dumps({**row, "speedup": {k: round(v, 3) for k, v in row["speedup"].items()}}))
    for label in ("default", "1 thread"):
        values = [row["speedup"][label] for row in found]
        print(f"{label}: speedup {min(values):.2f}-{max(values):.2f}x over {len(values)} windows")


if __name__ == "__main__":
    main()
