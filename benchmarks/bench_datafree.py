"""Fine-tuning without data (issue 28): ResNet-20 on a fixed plan, top-1 on ``cifar10_val5k.npz``, with
  - no data (no fine-tune, as without --data before),
  - stage 1 alone on train10k / on synthetic images / on 64 real unlabeled images + synthetic,
  - the whole fine-tune on train10k / on synthetic / on 64 real + synthetic.

Budgets are in optimiser steps so that rows compare on a busy machine too: ``--steps`` stage-2 steps stand for
the 10-minute budget (about 2,200 steps of batch 128 on 2 quiet cores). Making the synthetic images counts
towards it: a data-free row gets ``--steps`` minus the steps the same process trains in the time generation
took (seconds per step from the train10k row's stage 2, run first, or ``--step-seconds``).

Stage-1 scores are the recipe's own (``accuracy.stage1``, scored on val5k right after stage 1; stage 2 then runs
one step). The whole fine-tunes get no validation data (nothing is selected on val5k); val5k is scored once, at
the end. The synthetic images are made with the defaults of ``convslim.finetune.generation_settings``; with
``--cache DIR`` they are saved there once and reused (the ×2 and the rank-1 rows share them: same original).

Run from the repository root (needs ../shared/data), e.g. one thread per job on a shared machine:
    python benchmarks/bench_datafree.py --plan plan_x2.json --threads 1 --cache /tmp/df
    python benchmarks/bench_datafree.py --to dwsep --rank 1 --threads 1 --cache /tmp/df --rows stage1,full
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model, markdown_table, top1

from convslim import apply, compress, plan, prepare
from convslim.core import Plan
from convslim.finetune import finetune, from_synthetic, generation_settings
from convslim.inputs.data import ArrayData
from convslim.inputs.synthetic import SynthesisRecord, SynthesisSettings, SyntheticData, synthesize

EXAMPLE = (torch.randn(1, 3, 32, 32),)
QUIET = {"progress": False}


def synthetic_images(model, cache: Path | None, count: int | None) -> SyntheticData:
    """The default synthetic set (``count`` images), made once per cache folder."""
    settings = generation_settings(count or SynthesisSettings().count, None, progress=False)
    path = cache / f"synthetic-{settings.count}-{settings.steps}-seed{settings.seed}.pt" if cache else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False)  # written by this script
        return SyntheticData(saved["x"], None, saved["source"], record=SynthesisRecord(**saved["record"]))
    made = synthesize(model, EXAMPLE, settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": made.x, "source": made.source, "record": made.record.to_dict()}, path)
    return made


def run_hook(model, the_plan: Plan, hook, calibration) -> tuple[dict, torch.nn.Module]:
    result = compress(
        model,
        EXAMPLE,
        plan=the_plan,
        finetune=hook,
        calibration=calibration,
        verify=False,
        measure_speed=False,
    )
    return result.report.finetune.to_dict(), result.model


def hook_for(source: str, model, data: dict, steps: int, val) -> tuple:
    """(hook, calibration) for ``source``: "train10k", "synthetic" or "real64+synthetic"."""
    settings = {"steps": steps, "evals": 1, **QUIET}
    if source == "train10k":
        return finetune(data["train"], val, **settings), data["train"].x[:256]
    real = ArrayData(data["train"].x[:64], None, "64 train10k images") if "real64" in source else None
    made = from_synthetic(model, EXAMPLE, data["synthetic"], real, val, **settings)
    return made.hook, made.calibration


def stage1_row(source: str, model, the_plan, data: dict) -> dict:
    report, _ = run_hook(model, the_plan, *hook_for(source, model, data, 1, data["val"]))
    return {"row": f"stage 1 alone, {source}", "top1": report["accuracy"]["stage1"], "stage2 steps": 0}


def full_row(source: str, model, the_plan, data: dict, steps: int) -> dict:
    report, tuned = run_hook(model, the_plan, *hook_for(source, model, data, steps, None))
    done = sum((report.get(k) or {}).get("steps", 0) for k in ("stage2_blocks", "stage2_distill"))
    seconds = sum((report.get(k) or {}).get("seconds", 0.0) for k in ("stage2_blocks", "stage2_distill"))
    row = {"row": f"whole fine-tune, {source}", "top1": top1(tuned, *data["val_xy"]), "stage2 steps": done}
    row["s/step"] = round(seconds / max(done, 1), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plan", help="plan.json to apply (e.g. from `convslim plan --to auto --target-speedup 2`)"
    )
    parser.add_argument("--to", default="dwsep")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--rows", default="none,stage1,full", help="any of none, stage1, full")
    parser.add_argument("--sources", default="train10k,synthetic,real64+synthetic")
    parser.add_argument("--steps", type=int, default=2200, help="stage-2 steps standing for the 10 minutes")
    parser.add_argument("--step-seconds", type=float, help="seconds per stage-2 step (default: measured)")
    parser.add_argument("--count", type=int, help="synthetic images (default: generation_settings')")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="folder to keep the synthetic images in between runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = cifar_model("resnet20")
    prepared = prepare(model, EXAMPLE)
    the_plan = Plan.from_json(Path(args.plan).read_text(), args.plan) if args.plan else None
    the_plan = the_plan or plan(prepared, to=args.to, rank=args.rank)
    xt, yt = cifar_arrays("train10k")
    xv, yv = cifar_arrays("val5k")
    data = {"train": ArrayData(xt, yt, "train10k"), "val": ArrayData(xv, yv, "val5k"), "val_xy": (xv, yv)}
    sources = args.sources.split(",")
    if any("synthetic" in s for s in sources):
        data["synthetic"] = synthetic_images(model, args.cache, args.count)
        print(json.dumps({"synthetic": data["synthetic"].record.to_dict()}), flush=True)
    rows = []
    if "none" in args.rows:
        rows.append({"row": "no data (no fine-tune)", "top1": top1(apply(prepared, the_plan), xv, yv)})
    for kind in ("stage1", "full"):
        for source in sources if kind in args.rows else ():
            rows.append(_row(kind, source, model, the_plan, data, args, rows))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))


def _row(kind: str, source: str, model, the_plan, data: dict, args, rows: list[dict]) -> dict:
    start = time.perf_counter()
    if kind == "stage1":
        row = stage1_row(source, model, the_plan, data)
    else:
        steps = args.steps
        if "synthetic" in source:
            per_step = args.step_seconds or next((r["s/step"] for r in rows if r.get("s/step")), None)
            if per_step is None:
                raise SystemExit("give --step-seconds, or run the train10k whole fine-tune first (--sources)")
            steps -= round(data["synthetic"].record.seconds / per_step)
        row = full_row(source, model, the_plan, data, steps)
    row["wall s"] = round(time.perf_counter() - start, 1)
    return row


if __name__ == "__main__":
    main()
