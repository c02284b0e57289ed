"""Helpers shared by the benchmark scripts: the models they run on and CIFAR data from ../shared/data.

Run benchmarks from the repository root, e.g. ``python benchmarks/bench_dwsep.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from convslim.core.machine import cpu_flags, cpu_name
from convslim.models import load_cifar_resnet, resnet18, resnet50
from convslim.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

SHARED = Path(os.environ.get("CONVSLIM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th"}


def machine_record() -> dict:
    """What a timed figure's RESULTS.md entry needs about the machine: CPU, its vector extensions, torch, threads."""
    vector = sorted(f for f in cpu_flags() if f == "avx2" or f.startswith("avx512") or "vnni" in f)
    return {
        "cpu": cpu_name(),
        "vector": vector,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def need_shared(name: str) -> Path:
    path = SHARED / "data" / name
    if not path.is_file():
        sys.exit(f"{path} not found: put ../shared beside the repository or set CONVSLIM_SHARED")
    return path


def cifar_model(name: str) -> torch.nn.Module:
    return load_cifar_resnet(need_shared(CHECKPOINTS[name]))


def imagenet_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return {"resnet18": resnet18, "resnet50": resnet50}[name]().eval()


def cifar_arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``split`` is 'train10k' or 'val5k'; returns normalised N×3×32×32 floats and int64 labels."""
    data = np.load(need_shared(f"cifar10_{split}.npz"))
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(data["y"])


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    preds = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((preds == y).float().mean())


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def typed_setting(text: str, defaults) -> tuple[str, object]:
    """'lr=4e-3' -> ('lr', 0.004), typed like that field of the settings object ``defaults``."""
    key, _, value = text.partition("=")
    default = getattr(defaults, key)
    if isinstance(default, bool):
        return key, value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, str):
        return key, value
    if default is None:  # an optional number: typed as written
        return key, int(value) if value.lstrip("-").isdigit() else float(value)
    return key, type(default)(float(value))
