"""Quickstart: train a small CNN on scikit-learn's digits, compress it with the CLI, then win the accuracy back.

    python examples/quickstart.py [--out DIR]

Trains ``convslim.models.digits:digits_cnn`` on 8×8 digits upsampled to 16×16 for a fixed number of epochs (so
the result does not depend on how busy the machine is), saves its state_dict, runs
``convslim compress ... --to dwsep --rank 1`` on it (rewrite, ONNX export, ORT parity and speed), prints the
report and the held-out accuracy, then runs the same command with ``--data`` (fine-tuning on the training
images) and shows the accuracy it wins back. Outputs go to a fresh temporary folder unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from convslim.cli import main as convslim_main
from convslim.models.digits import digits_cnn


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, torch.tensor(data.target)


SIZE = 16  # 8×8 digits upsampled: big enough for two stride-2 stages, small enough to train in seconds
EPOCHS = 3  # fixed, not timed: the same model on any machine, however busy


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = EPOCHS) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(x), generator=generator).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    x, y = digits_tensors()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    # held-out test images are never seen by training or by the fine-tune's choice of its best weights
    train_idx, val_idx, test_idx = order[:1300], order[1300:1500], order[1500:]

    model = digits_cnn()
    train(model, x[train_idx], y[train_idx], args.epochs)
    work = Path(tempfile.mkdtemp(prefix="convslim-quickstart-"))
    checkpoint = work / "digits_cnn.pt"
    torch.save(model.state_dict(), checkpoint)
    out = Path(args.out) if args.out else work / "compressed"

    model_args = [
        str(checkpoint),
        "--arch",
        "convslim.models.digits:digits_cnn",
        "--input-shape",
        f"1,1,{SIZE},{SIZE}",
    ]
    argv = ["compress", *model_args, "--to", "dwsep", "--rank", "1", "--out", str(out), "--quiet"]
    print("\n$ convslim " + " ".join(argv))
    code = convslim_main(argv)
    if code != 0:
        return code
    print("\n" + (out / "report.md").read_text().split("## Run")[0])

    from convslim import load_compressed

    def held_out(folder: Path) -> float:
        return accuracy(
            load_compressed(digits_cnn(), torch.zeros(1, 1, SIZE, SIZE), folder), x[test_idx], y[test_idx]
        )

    original = accuracy(model, x[test_idx], y[test_idx])
    print(f"held-out accuracy: original {original:.1%}, compressed (no fine-tuning) {held_out(out):.1%}")

    # the same compression, fine-tuned on the training images: stage 1 refits each layer, stage 2 distils
    train_file, val_file = work / "train.npz", work / "val.npz"
    np.savez(train_file, x=x[train_idx].numpy(), y=y[train_idx].numpy())
    np.savez(val_file, x=x[val_idx].numpy(), y=y[val_idx].numpy())
    tuned = out.with_name(out.name + "-finetuned")
    argv = ["compress", *model_args, "--to", "dwsep", "--rank", "1", "--data", str(train_file)]
    argv += ["--val-data", str(val_file), "--finetune-steps", "60", "--batch-size", "64", "--no-augment"]
    argv += ["--no-speed", "--quiet", "--out", str(tuned)]
    print("\n$ convslim " + " ".join(argv))
    code = convslim_main(argv)
    if code != 0:
        return code
    print(f"\nheld-out accuracy: original {original:.1%}, compressed and fine-tuned {held_out(tuned):.1%}")
    print(f"outputs in {out} and {tuned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
