"""Quickstart: train a small CNN on scikit-learn's digits (under a minute), then compress it with the CLI.

    python examples/quickstart.py [--out DIR]

Trains ``convslim.models.digits:digits_cnn`` on 8×8 digits upsampled to 32×32, saves its state_dict, runs
``convslim compress ... --to dwsep --rank 2`` on it (rewrite, ONNX export, ORT parity and speed), prints
the report and the held-out accuracy of the original and compressed models. Outputs go to a fresh temporary
folder unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from convslim.cli import main as convslim_main
from convslim.models.digits import digits_cnn


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5, torch.tensor(data.target)


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float = 30.0) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    start, epoch = time.perf_counter(), 0
    model.train()
    while epoch < 12 and time.perf_counter() - start < seconds:
        for idx in torch.randperm(len(x), generator=generator).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch += 1
        print(f"epoch {epoch}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (default: a new temporary folder)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    x, y = digits_tensors()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    train_idx, test_idx = order[:1500], order[1500:]

    model = digits_cnn()
    train(model, x[train_idx], y[train_idx])
    work = Path(tempfile.mkdtemp(prefix="convslim-quickstart-"))
    checkpoint = work / "digits_cnn.pt"
    torch.save(model.state_dict(), checkpoint)
    out = Path(args.out) if args.out else work / "compressed"

    argv = [
        "compress",
        str(checkpoint),
        "--arch",
        "convslim.models.digits:digits_cnn",
        "--input-shape",
        "1,1,32,32",
        "--to",
        "dwsep",
        "--rank",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    print("\n$ convslim " + " ".join(argv))
    code = convslim_main(argv)
    if code != 0:
        return code
    print("\n" + (out / "report.md").read_text())

    from convslim import load_compressed

    compressed = load_compressed(digits_cnn(), torch.zeros(1, 1, 32, 32), out)
    print(
        f"held-out accuracy: original {accuracy(model, x[test_idx], y[test_idx]):.1%}, "
        f"compressed (no fine-tuning) {accuracy(compressed, x[test_idx], y[test_idx]):.1%}"
    )
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
