"""Top-1 on ``cifar10_val5k.npz`` (all 5,000 images) of a ``convslim compress`` output folder's ``model.onnx``
and ``original.onnx``, run by ONNX Runtime on the CPU: what the deployed files score, with nothing selected on
val5k (the CLI run holds its own split of ``--data`` out for validation).

    python benchmarks/score_onnx.py out/          # {"model.onnx": 88.3, "model.onnx images": 5000, ...}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime as ort
from common import cifar_arrays

from convslim.runtime.sessions import run_batched


def onnx_top1(path: Path, x, y) -> tuple[float, int]:
    """(top-1 in %, images scored): a static-shape export scores whole batches only (``run_batched``)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = run_batched(session, x, 250)
    return round(100 * float((logits.argmax(1) == y[: len(logits)].numpy()).mean()), 2), len(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a convslim compress --out folder")
    args = parser.parse_args()
    x, y = cifar_arrays("val5k")
    scores = {}
    for name in ("model.onnx", "original.onnx"):
        scores[name], scores[f"{name} images"] = onnx_top1(args.out / name, x, y)
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
