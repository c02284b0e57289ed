"""How steady a compress output's speedup is at ORT's default threads and at one thread, timed side by side.

Four sessions (original.onnx and model.onnx, each with ORT's default intra-op threads and with one) alternate in
short blocks (A B C D, D C B A, ...) for ``--seconds``; every ``--window`` rounds the script prints each session's
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
import time
from pathlib import Path

import numpy as np

from convslim.runtime.sessions import feeds, open_session

CPU = ["CPUExecutionProvider"]


def time_interleaved(sessions: dict, x: np.ndarray, seconds: float, block: float) -> list[dict[str, list]]:
    """Rounds of one block per session (order reversed every other round): per round, each session's run times."""
    fed = {name: feeds(s, [x]) for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(3):
            session.run(None, fed[name])
    names, rounds, end = list(sessions), [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        runs: dict[str, list] = {}
        for name in names if len(rounds) % 2 == 0 else names[::-1]:
            sessions[name].run(None, fed[name])  # untimed: it pays for the other session's cache traffic
            runs[name], start = [], time.perf_counter()
            while time.perf_counter() - start < block:
                t0 = time.perf_counter()
                sessions[name].run(None, fed[name])
                runs[name].append(time.perf_counter() - t0)
        rounds.append(runs)
    return rounds


def windows(rounds: list[dict[str, list]], size: int) -> list[dict]:
    """Per window of ``size`` rounds: each session's median ms and the speedup at each thread count."""
    out = []
    for start in range(0, len(rounds), size):
        chunk = rounds[start : start + size]
        ms = {n: 1e3 * statistics.median(t for r in chunk for t in r[n]) for n in chunk[0]}
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
    shape = (args.batch, *(int(v) for v in args.input_shape.split(",")))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    found = windows(time_interleaved(sessions, x, args.seconds, args.block), args.window)
    for row in found:
        print(json.dumps({**row, "speedup": {k: round(v, 3) for k, v in row["speedup"].items()}}))
    for label in ("default", "1 thread"):
        values = [row["speedup"][label] for row in found]
        print(f"{label}: speedup {min(values):.2f}-{max(values):.2f}x over {len(values)} windows")


if __name__ == "__main__":
    main()
