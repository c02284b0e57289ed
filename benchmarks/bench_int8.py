"""int8 on top of the rewrite, against what users compare with: top-1 on ``cifar10_val5k.npz`` and ORT-CPU latency
(batch 1 and 32, long alternating blocks) of the original in fp32 and int8, each form's fastest setting in fp32
and int8, and ``--to auto --runtime cpu-int8 --target-speedup 2.5 / 3 / 3.5``, with the fine-tune.

Every row is one ``compress(..., deploy=DeploySettings(runtime="cpu-int8"))``: its report holds all four models
(original fp32/int8, compressed fp32/int8) timed together, so the original rows are the first report's. int8
calibrates on the first 512 images of ``cifar10_train10k.npz``; fine-tuning trains on all 10k.

Run from the repository root (needs ../shared/data), on a quiet machine:
    python benchmarks/bench_int8.py --models resnet20,resnet32 --minutes 10
    python benchmarks/bench_int8.py --quick          # a smoke run: ResNet-20, dwsep only, no fine-tune
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import cifar_arrays, cifar_model, markdown_table

from convslim import compress
from convslim.finetune import finetune
from convslim.inputs.data import ArrayData
from convslim.runtime import TimingSettings
from convslim.runtime.deploy import DeploySettings
from convslim.runtime.int8 import Calibration

# each form's fastest setting on the CIFAR ResNets in fp32 (bench_dwsep, bench_spatial_grouped, bench_octave)
FASTEST = {
    "dwsep": {"rank": 1},
    "spatial": {"rank": 0.25, "rank_multiple": 16},
    "grouped": {"groups": 2},
    "octave": {"alpha": 0.5},
}
MODELS = ("original_fp32", "original_int8", "compressed_fp32", "compressed_int8")


def run_one(name: str, label: str, args, data, **kwargs) -> dict:
    (xt, yt), (xv, yv) = data
    hook = None
    if args.minutes > 0:
        hook = finetune(ArrayData(xt, yt), ArrayData(xv, yv), minutes=args.minutes, evals=1, progress=False)
    deploy = DeploySettings(
        runtime="cpu-int8",
        calibration=Calibration.split(ArrayData(xt, yt, "train10k"), 512, ArrayData(xv, yv, "val5k")),
        timing=TimingSettings(seconds=args.seconds, block_seconds=args.block, min_rounds=args.rounds),
    )
    t0 = time.perf_counter()
    result = compress(
        cifar_model(name),
        (torch.randn(1, 3, 32, 32),),
        calibration=xt[:64],
        finetune=hook,
        deploy=deploy,
        batch_sizes=args.batch_sizes,
        **kwargs,
    )
    report = result.report
    return {"model": name, "setting": label, "deploy": report.deploy, "total_s": time.perf_counter() - t0}


def rows_of(run: dict, with_original: bool) -> list[dict]:
    """One table row per model in the report (the originals only when asked)."""
    deploy = run["deploy"]
    acc, speed = deploy["accuracy"], deploy["speed"]
    rows = []
    for model in MODELS if with_original else MODELS[2:]:
        row = {
            "model": run["model"],
            "setting": "original" if model.startswith("original") else run["setting"],
        }
        row["precision"] = model.split("_")[1]
        row["top1"] = acc[model]
        for batch, entry in speed.items():
            row[f"ms b{batch}"] = entry["latency"][model]["ms"]
            for ref in ("original_fp32", "original_int8"):
                v = entry["speedup"][f"vs_{ref}"].get(model)
                row[f"x vs {ref} b{batch}"] = (
                    "—"
                    if v is None
                    else f"{v['speedup']:.2f} ({v['speedup_iqr'][0]:.2f}–{v['speedup_iqr'][1]:.2f})"
                )
        own = deploy.get("int8", {}).get(model.split("_")[0], {})  # "original" or "compressed"
        row["int8 nodes kept fp32"] = len(own.get("excluded", [])) if model.endswith("int8") else ""
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet32")
    parser.add_argument("--forms", default="dwsep,spatial,grouped,octave")
    parser.add_argument("--targets", default="2.5,3,3.5", help="--target-speedup values for --to auto")
    parser.add_argument("--minutes", type=float, default=10.0, help="fine-tune minutes per row (0: none)")
    parser.add_argument("--seconds", type=float, default=20.0, help="least timing seconds per batch size")
    parser.add_argument("--block", type=float, default=3.0, help="seconds per timing block (long blocks)")
    parser.add_argument("--rounds", type=int, default=6, help="least alternation rounds")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: resnet20, dwsep, no fine-tune, short"
    )
    args = parser.parse_args()
    if args.quick:
        args.models, args.forms, args.targets, args.minutes = "resnet20", "dwsep", "", 0.0
        args.seconds, args.block, args.rounds, args.batch_sizes = 0.2, 0.05, 2, "2"
    args.batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    torch.set_num_threads(2)
    data = cifar_arrays("train10k"), cifar_arrays("val5k")
    if args.quick:
        data = tuple((x[:600], y[:600]) for x, y in data)
    rows = []
    for name in args.models.split(","):
        runs = [
            run_one(name, f"{form} {json.dumps(o)}", args, data, to=form, **o) for form, o in _forms(args)
        ]
        for target in (float(t) for t in args.targets.split(",") if t):
            runs.append(run_one(name, f"auto int8 {target}x", args, data, to="auto", target_speedup=target))
        for i, run in enumerate(runs):
            rows += rows_of(run, with_original=i == 0)
            print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))


def _forms(args):
    return [(form, FASTEST[form]) for form in args.forms.split(",") if form]


if __name__ == "__main__":
    main()
