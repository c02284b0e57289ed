"""Octave form: MACs, output error before fine-tuning, ONNX parity and ORT CPU speedup, region vs wrapper form.

Run from the repository root:

    python benchmarks/bench_octave.py                                   # everything (slow on 2 cores)
    python benchmarks/bench_octave.py --models resnet50 --alphas 0.5 --forms region --batch-sizes 1

CIFAR ResNets come from ../shared/data (calibration: 64 CIFAR validation images); the ImageNet-shaped layouts
are randomly initialised with non-trivial BN statistics (their error is not an accuracy proxy).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model, imagenet_model, markdown_table

from convslim import api
from convslim.runtime import TimingSettings, export_model, measure_speed

SIZES = {"resnet20": 32, "resnet32": 32, "resnet18": 224, "resnet50": 224}


def load(name: str) -> tuple[torch.nn.Module, torch.Tensor | None]:
    if name.startswith("resnet") and SIZES[name] == 32:
        return cifar_model(name), cifar_arrays("val5k")[0][:64]
    return imagenet_model(name), None


def run_one(name: str, alpha: float, form: str, args, folder: Path, original_onnx: Path) -> dict:
    model, calibration = load(name)
    x = torch.randn(1, 3, SIZES[name], SIZES[name])
    out = folder / f"{name}-{alpha}-{form}"
    result = api.compress(
        model,
        x,
        to="octave",
        alpha=alpha,
        octave_region=form == "region",
        calibration=calibration,
        measure_speed=False,
        out_dir=out,
        overwrite=True,
    )
    plan, report = result.plan, result.report
    macs_before = sum(d.macs_before for d in plan.layers)
    macs_after = sum(d.macs_after for d in plan.layers)
    row = {
        "model": name,
        "alpha": alpha,
        "form": form,
        "conv MACs ratio": macs_after / max(macs_before, 1),
        "rel out err": report.parity["compressed_vs_original"]["rel_l2"],
        "onnx parity": report.parity["onnx_vs_torch"]["max_abs_err"]
        / report.parity["onnx_vs_torch"]["output_scale"],
        "parity ok": report.parity["onnx_vs_torch"]["passed"],
        "note": next((n for n in report.notes if n.startswith("octave")), ""),
    }
    speed = measure_speed(
        original_onnx,
        out / "model.onnx",
        (x,),
        args.batch_sizes,
        settings=TimingSettings(seconds=args.seconds),
    )
    for batch in args.batch_sizes:
        row[f"speedup b{batch}"] = speed[str(batch)]["speedup"]
        row[f"ms b{batch} orig/oct"] = (
            f"{speed[str(batch)]['latency_ms_original']:.1f}/{speed[str(batch)]['latency_ms_compressed']:.1f}"
        )
    return row


def export_original(name: str, folder: Path) -> Path:
    model, _ = load(name)
    x = torch.randn(1, 3, SIZES[name], SIZES[name])
    prepared = api.prepare(model, (x,))  # BN folded, exactly what compress compares against
    path = folder / f"{name}-original.onnx"
    export_model(prepared.traced.module, (x,), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--forms", nargs="+", default=["region", "wrapper"], choices=["region", "wrapper"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing seconds per batch size")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-octave-") as scratch:
        folder = Path(scratch)
        for name in args.models:
            original = export_original(name, folder)
            for alpha in args.alphas:
                for form in args.forms:
                    rows.append(run_one(name, alpha, form, args, folder, original))
                    print(markdown_table(rows[-1:]), flush=True)
    print("\n" + markdown_table(rows))


if __name__ == "__main__":
    main()
