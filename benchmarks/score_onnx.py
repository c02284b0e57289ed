"""Top-1 on ``cifar10_val5k.npz`` (all 5,000 images) of a ``convslim compress`` output folder's ``model.onnx``
and ``original.onnx``, run by ONNX Runtime on the CPU: what the deployed files score, with nothing selected on
val5k (the CLI run holds its own split of ``--data`` out for validation).

    python benchmarks/score_onnx.py out/          # {"model.onnx": 88.3, "model.onnx images": 5000, ...}
    python benchmarks/score_onnx.py out/ --fit    # also on train10k's parts the CLI fine-tuned on / held out

``--fit`` splits ``cifar10_train10k.npz`` as the CLI does with ``--seed 0`` and ``--val-split`` (default: the
CLI's default, 10 % but at most 500 images; 0.1 for runs made before c5ea360) and scores both parts: how well
the student learned the images it saw against those it did not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime as ort
from common import cifar_arrays

from convslim.inputs.data import ArrayData
from convslim.inputs.sets import HeldOut, split_held_out
from convslim.runtime.sessions import run_batched


def onnx_top1(path: Path, x, y) -> tuple[float, int]:
    """(top-1 in %, images scored): a static-shape export scores whole batches only (``run_batched``)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = run_batched(session, x, 250)
    return round(100 * float((logits.argmax(1) == y[: len(logits)].numpy()).mean()), 2), len(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a convslim compress --out folder")
    parser.add_argument("--fit", action="store_true", help="also score the CLI's split of train10k")
    parser.add_argument("--val-split", type=float, help="--fit: the run's --val-split (default: the CLI's)")
    args = parser.parse_args()
    sets = {"val5k": cifar_arrays("val5k")}
    if args.fit:
        seen, held = split_held_out(ArrayData(*cifar_arrays("train10k")), HeldOut(args.val_split))
        sets.update({"train10k fine-tuned on": (seen.x, seen.y), "train10k held out": (held.x, held.y)})
    scores = {}
    for label, (x, y) in sets.items():
        prefix = "" if label == "val5k" else f"{label}: "
        for name in ("model.onnx", "original.onnx"):
            scores[prefix + name], scores[f"{prefix}{name} images"] = onnx_top1(args.out / name, x, y)
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
