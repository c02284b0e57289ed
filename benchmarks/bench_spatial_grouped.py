"""Benchmark the ``spatial`` and ``grouped`` forms: MACs, params, relative output error and ORT CPU speedup.

CIFAR ResNet-20/32 use the trained checkpoints from ../shared/data (error is measured on 256 validation
images; top-1 on 1000); ImageNet-shaped ResNet-18/50 at 224×224 have random weights (speed only).

Run from the repository root:

    python benchmarks/bench_spatial_grouped.py --models resnet20,resnet32,resnet50 --seconds 2

Timing: both ONNX models in identical ORT sessions, alternating blocks, median of at least ``--min-runs`` runs per
batch size (``convslim.runtime.timing``'s method; fewer minimum runs so ResNet-50 at batch 32 fits on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cifar_arrays, cifar_model, imagenet_model, markdown_table, top1  # noqa: E402

from convslim import compress  # noqa: E402
from convslim.runtime import TimingSettings, export_model, measure_models  # noqa: E402

SETTINGS = {
    "spatial": [{"rank": 0.5}, {"rank": 0.25}, {"rank": 0.25, "rank_multiple": 16}],
    "grouped": [{"groups": 2}, {"groups": 4}, {"groups": 4, "mix": True, "width": 0.25}],
}


# --quick: the settings the acceptance check names (spatial at half and quarter rank, grouped with g = 4)
QUICK = {"spatial": [{"rank": 0.5}, {"rank": 0.25}], "grouped": [{"groups": 4}]}


def time_pair(original: Path, compressed: Path, example: tuple, batch: int, seconds: float, min_runs: int):
    settings = TimingSettings(seconds=seconds, min_runs=min_runs)
    timed = measure_models(
        {"original": original, "compressed": compressed}, example, (batch,), settings=settings
    )
    return (timed[str(batch)][k].median_s * 1e3 for k in ("original", "compressed"))


def run_one(name, model, example, form, options, args, calib, val) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = compress(
            model,
            example,
            to=form,
            measure_speed=False,
            calibration=calib,
            out_dir=Path(tmp) / "out",
            **options,
        )
        original = Path(tmp) / "original.onnx"
        export_model(result.prepared.traced.module, example, original)
        plan = result.plan
        macs_b = sum(d.macs_before for d in plan.layers)
        macs_a = sum(d.macs_after for d in plan.layers)
        par_b = sum(d.params_before for d in plan.layers)
        par_a = sum(d.params_after for d in plan.layers)
        row = {
            "model": name,
            "form": form,
            "setting": _fmt(options),
            "layers": f"{len(plan.rewritten)}/{len(plan.layers)}",
            "MACs": macs_a / macs_b,
            "params": par_a / par_b,
            "rel_err": result.report.parity["compressed_vs_original"]["rel_l2"],
            "onnx_ok": result.report.parity["onnx_vs_torch"]["passed"],
        }
        if val is not None:
            row["top1"] = top1(result.model, *val)
        for batch in args.batch_sizes:
            orig_ms, comp_ms = time_pair(
                original, Path(tmp) / "out" / "model.onnx", example, batch, args.seconds, args.min_runs
            )
            row[f"ms@{batch}"] = f"{orig_ms:.2f}→{comp_ms:.2f}"
            row[f"speedup@{batch}"] = orig_ms / comp_ms
    print(f"  {name} {form} {_fmt(options)}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return row


def _fmt(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet32,resnet50")
    parser.add_argument("--forms", default="spatial,grouped")
    parser.add_argument("--batch-sizes", default="1,32", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing seconds per batch size")
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the settings in QUICK")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for name in args.models.split(","):
        if name.startswith("resnet") and name in ("resnet20", "resnet32"):
            model, example = cifar_model(name), (torch.randn(1, 3, 32, 32),)
            x, y = cifar_arrays("val5k")
            calib, val = x[:256], (x[:1000], y[:1000])
            base = {"model": name, "form": "original", "top1": top1(model, *val)}
            print(f"  {name} original top-1 {base['top1']:.4f}", file=sys.stderr)
        else:
            model, example, calib, val = imagenet_model(name), (torch.randn(1, 3, 224, 224),), None, None
        for form in args.forms.split(","):
            for options in (QUICK if args.quick else SETTINGS)[form]:
                rows.append(run_one(name, model, example, form, options, args, calib, val))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(markdown_table([{k: r.get(k, "") for k in keys} for r in rows]))


if __name__ == "__main__":
    main()
