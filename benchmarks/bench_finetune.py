"""Fine-tuning benchmark: CIFAR ResNets rewritten by each registered form, then stage 1 + stage 2 fine-tuning
on ``cifar10_train10k.npz``; top-1 on ``cifar10_val5k.npz`` (baselines: ResNet-20 91.62 %, ResNet-32 92.54 %).

Per row: measured ORT-CPU speedup (batch 1 and 32, the normal pipeline), top-1 of the compressed model before
fine-tuning, after stage 1 (layer-wise least squares) and after stage 2 (block-wise + end-to-end distillation),
and the fine-tune wall time. Validation runs once, at the end (``evals=1``), so the weights are the final ones:
val5k is measured, never selected on.

Run from the repository root (needs ../shared/data):
    python benchmarks/bench_finetune.py --model resnet20 --forms dwsep --minutes 8
    python benchmarks/bench_finetune.py --model resnet32 --forms dwsep,spatial,grouped,octave --minutes 8
With ``--steps N`` the budget is N stage-2 steps instead of minutes, so that runs sharing a busy machine compare
(on 2 quiet cores 10 minutes gave ResNet-20 about 2,523 steps and ResNet-32 about 1,500), e.g. the README's
ablation rows: ``--plan benchmarks/plans/resnet20_x2.json --steps 2523 --threads 1 --no-speed --set lr=2e-3``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model, machine_record, markdown_table, top1, typed_setting

from convslim import FORMS, compress
from convslim.core import Plan
from convslim.finetune import FinetuneSettings, finetune
from convslim.inputs.data import ArrayData
from convslim.inputs.sets import HeldOut, split_held_out

# a setting per form that is cheaper than the original (dwsep: ≥2.5x measured at batch 32 on ResNet-20;
# spatial: the setting bench_spatial_grouped measures faster at batch 1 and 32; grouped and octave measure slower
# than the dense CIFAR ResNets at every setting benchmarked, so their rows show recovery, not a speed point)
SETTINGS = {
    "dwsep": {"rank": 1},
    "spatial": {"rank": 0.25, "rank_multiple": 16},
    "grouped": {"groups": 2},
    "octave": {"alpha": 0.5},
}


def run_one(
    name: str,
    form: str,
    options: dict,
    exclude: list[str],
    minutes: float | None,
    seed: int,
    plan: Plan | None = None,
    **settings,
) -> dict:
    model = cifar_model(name)
    xt, yt = cifar_arrays("train10k")
    xv, yv = cifar_arrays("val5k")
    measure_speed = settings.pop("measure_speed", True)
    hold_out = settings.pop("hold_out", 0.0)
    if hold_out:  # train on what the CLI trains on when it holds out this share of --data
        kept, _ = split_held_out(ArrayData(xt, yt), HeldOut(hold_out))
        xt, yt = kept.x, kept.y
    hook = finetune(
        ArrayData(xt, yt), ArrayData(xv, yv), minutes=minutes, seed=seed, evals=1, progress=False, **settings
    )
    start = time.perf_counter()
    result = compress(
        model,
        (torch.randn(1, 3, 32, 32),),
        to=form,
        calibration=xt[:64],
        finetune=hook,
        exclude=exclude,
        plan=plan,
        measure_speed=measure_speed,
        **options,
    )
    ft = result.report.finetune
    acc = ft["accuracy"]
    speed = result.report.latency_tables().get("ort_cpu", {})
    return {
        "model": name,
        "form": form,
        "setting": (f"plan {plan.form}" if plan else json.dumps(options))
        + (f" exclude={exclude}" if exclude else "")
        + (f" {json.dumps(settings)}" if settings else ""),
        "speedup b1": speed.get("1", {}).get("speedup"),
        "speedup b32": speed.get("32", {}).get("speedup"),
        "top1 original": acc["original"],
        "top1 before": acc["compressed"],
        "top1 stage1": acc["stage1"],
        "top1 stage2": acc["stage2"],
        "top1 exported model": top1(result.model, xv, yv),
        "finetune s": ft["wall_time_s"],
        "total s": round(time.perf_counter() - start, 1),
    }


def run_profile(args, settings: dict) -> None:
    """``--profile``: where one stage-2 step's time goes on the plan, against plain training (see
    ``finetune_profile``)."""
    from finetune_profile import profile, variants

    xt, yt = cifar_arrays("train10k")
    xv, yv = cifar_arrays("val5k")
    plan = Plan.from_json(Path(args.plan).read_text(), args.plan)
    s = FinetuneSettings(**{k: v for k, v in settings.items() if k != "measure_speed"})
    if args.variants:
        result = variants(cifar_model(args.model), plan, ArrayData(xt, yt), s)
    else:
        result = profile(cifar_model(args.model), plan, ArrayData(xt, yt), ArrayData(xv, yv), s, args.rounds)
    print(json.dumps({**result, "run": machine_record()}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "resnet32"))
    parser.add_argument("--forms", default="dwsep")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--steps", type=int, help="a budget of stage-2 steps instead of --minutes")
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan", help="apply this plan.json (e.g. from `convslim plan --to auto`) instead")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a FinetuneSettings field for the ablation, e.g. --set lr=4e-3 --set optimizer=sgd",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the ORT speed measurement")
    parser.add_argument(
        "--hold-out",
        type=float,
        default=0.0,
        help="train on train10k less the CLI's --val-split of this share",
    )
    parser.add_argument("--profile", action="store_true", help="profile one stage-2 step on --plan instead")
    parser.add_argument("--rounds", type=int, default=3, help="--profile: alternating rounds of timing")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="profile the student's step eager, under torch.compile and with 1x1 convs as matmuls",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(typed_setting(text, FinetuneSettings()) for text in args.set)
    if args.profile or args.variants:
        if not args.plan:
            parser.error("--profile and --variants need --plan")
        return run_profile(args, settings)
    if args.no_speed:
        settings["measure_speed"] = False
    if args.steps:
        settings["steps"], args.minutes = args.steps, None
    settings["hold_out"] = args.hold_out
    plan = Plan.from_json(Path(args.plan).read_text(), args.plan) if args.plan else None
    rows = []
    for form in ["plan"] if plan else args.forms.split(","):
        if not plan and form not in FORMS:
            print(f"skipping {form}: not registered")
            continue
        options = {} if plan else SETTINGS.get(form, {})
        rows.append(
            run_one(args.model, form, options, args.exclude, args.minutes, args.seed, plan, **settings)
        )
        print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
