"""Fine-tuning without data (issue 28): ResNet-20 on a fixed plan, top-1 on ``cifar10_val5k.npz``, with
  - no data (no fine-tune, as without --data before),
  - stage 1 alone on train10k / on synthetic images / on 64 real unlabeled images + synthetic,
  - the whole fine-tune on train10k / on synthetic / on 64 real + synthetic.

Budgets are in optimiser steps so that rows compare on a busy machine too: ``--steps`` stage-2 steps stand for
the 10-minute budget (about 2,200 steps of batch 128 on 2 quiet cores). Making the synthetic images counts
towards it, as under ``--finetune-minutes``: a generation step (128 images) costs ``--gen-step-ratio`` training
steps (measured here, interleaved, unless given); the images are as many batches as fit in the share
``GENERATION_SHARE`` of the budget (unless ``--count``), and a data-free row trains ``--steps`` minus their cost.

Stage-1 scores are the recipe's own (``accuracy.stage1``, scored on val5k right after stage 1; stage 2 then runs
one step). The whole fine-tunes get no validation data (nothing is selected on val5k); val5k is scored once, at
the end. The synthetic images are made with the defaults of ``convslim.finetune.generation_settings`` and
trained on with the library's synthetic recipe (``SYNTHETIC_RECIPE``: mixup, so the teacher runs live; charge
that with ``--steps``, e.g. 0.9× as many; ``--set FIELD=VALUE`` changes a ``FinetuneSettings`` field of every
row, e.g. ``--set distill_lr_scale=1.6667``); with
``--cache DIR`` they are saved there once and reused (the ×2 and the rank-1 rows share them: same original).

Run from the repository root (needs ../shared/data), e.g. one thread per job on a shared machine:
    python benchmarks/bench_datafree.py --plan plan_x2.json --threads 1 --cache /tmp/df
    python benchmarks/bench_datafree.py --to dwsep --rank 1 --threads 1 --cache /tmp/df --rows stage1,full
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model, markdown_table, top1, typed_setting
from torch import nn

from convslim import apply, compress, plan, prepare
from convslim.core import Plan
from convslim.finetune import FinetuneSettings, finetune, from_synthetic, generation_settings
from convslim.finetune.datafree import GENERATION_SHARE
from convslim.inputs.bn_probe import BatchNormProbe, channel_moments
from convslim.inputs.data import ArrayData
from convslim.inputs.synthetic import (
    SynthesisRecord,
    SynthesisSettings,
    SyntheticData,
    synthesize,
)

EXAMPLE = (torch.randn(1, 3, 32, 32),)
QUIET = {"progress": False}


def synthetic_images(model, cache: Path | None, count: int, fields: dict | None = None) -> SyntheticData:
    """``count`` images made with the defaults, or with the ``SynthesisSettings`` ``fields`` given. Batch k
    depends only on (seed, k), so a cached larger set made with the same settings gives the first ``count`` (and
    its time, pro rata)."""
    settings = generation_settings(count, None, progress=False, **(fields or {}))
    made_as = "-".join(  # what the images depend on
        f"{key}{value}"
        for key, value in asdict(settings).items()
        if key not in ("count", "seconds", "progress")
    )
    for path in sorted(cache.glob(f"synthetic-*-{made_as}.pt")) if cache else ():
        saved = torch.load(path, weights_only=False)  # written by this script
        if len(saved["x"]) >= count and count % settings.batch_size == 0:
            record = SynthesisRecord(**saved["record"])
            seconds = round(record.seconds * count / record.images, 1)
            record = replace(record, images=count, asked=count, seconds=seconds)
            return SyntheticData(saved["x"][:count], None, f"synthetic:{count}", record=record)
    made = synthesize(model, EXAMPLE, settings)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"synthetic-{count}-{made_as}.pt"
        torch.save({"x": made.x, "source": made.source, "record": made.record.to_dict()}, path)
    return made


def autograd_moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and variance by ``torch.var_mean``, autograd's backward (the library's before 495324d)."""
    var, mean = torch.var_mean(a, dim=(0, 2, 3), unbiased=False)
    return mean, var


def step_cost_ratio(
    model, the_plan: Plan, repeats: int = 6, moments=channel_moments, coarse: bool = False
) -> float:
    """Time of one generation step (128 images; ``coarse``: a half-resolution one, fed upsampled) / one
    stage-2-like training step (batch 128: teacher forward, student forward + backward, AdamW), interleaved so
    that both see the same load; the median of ``repeats``."""
    prepared = prepare(model, EXAMPLE)
    teacher = prepared.traced.module.eval().to(memory_format=torch.channels_last)
    student = apply(prepared, the_plan).train().to(memory_format=torch.channels_last)
    frozen = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    probe = BatchNormProbe(frozen, moments)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    image = (x[..., ::2, ::2] if coarse else x).contiguous(memory_format=torch.channels_last)
    image = image.clone().requires_grad_(True)  # a leaf in the layout synthesis optimises, as _leaf makes it
    opt = torch.optim.AdamW(student.parameters(), 1e-3)
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        frozen(nn.functional.interpolate(image, size=(32, 32), mode="bilinear") if coarse else image)
        torch.autograd.grad(probe.take(), image)
        middle = time.perf_counter()
        with torch.no_grad():
            target = teacher(x).softmax(1)
        loss = torch.nn.functional.kl_div(student(x).log_softmax(1), target, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        ratios.append((middle - start) / (time.perf_counter() - middle))
    probe.close()
    return statistics.median(ratios[1:])


def capped_count(steps: int, ratio: float, settings: SynthesisSettings) -> int:
    """The images a ``--finetune-minutes`` run makes with ``settings`` on a budget of ``steps`` stage-2 steps:
    batches while another one fits in ``GENERATION_SHARE`` of the budget (as ``synthesize`` stops under
    ``seconds``)."""
    batch_cost = settings.steps * ratio  # in training steps
    return max(1, int(GENERATION_SHARE * steps / batch_cost)) * settings.batch_size


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
    """(hook, calibration) for ``source``: "train10k", "synthetic", "real64+synthetic" or "real:N" (the first N
    train10k images without their labels, as synthetic ones come: how far the images' number alone limits);
    ``data["settings"]`` (``--set``) override the recipe's fields."""
    settings = {"steps": steps, "evals": 1, **QUIET, **data.get("settings", {})}
    if source == "train10k":
        return finetune(data["train"], val, **settings), data["train"].x[:256]
    if source.startswith("real:"):
        real = ArrayData(data["train"].x[: int(source[5:])], None, f"{source[5:]} train10k images, no labels")
        return finetune(real, val, **settings), real.x[:256]
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
        "--plan", help="plan.json to apply (from `convslim plan --to auto --target-speedup 2`)"
    )
    parser.add_argument("--to", default="dwsep")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--rows", default="none,stage1,full", help="any of none, stage1, full")
    parser.add_argument(
        "--sources",
        default="train10k,synthetic,real64+synthetic",
        help="also real:N (N unlabeled train10k images)",
    )
    parser.add_argument("--steps", type=int, default=2200, help="stage-2 steps standing for the 10 minutes")
    parser.add_argument(
        "--gen-step-ratio",
        type=float,
        help="generation step / training step (default: measured; 0: the images cost nothing, give --count)",
    )
    parser.add_argument("--count", type=int, help="synthetic images (default: what the time share makes)")
    parser.add_argument(
        "--synthesis",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a SynthesisSettings field to make the images with, e.g. --synthesis coarse=0",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a FinetuneSettings field for every row's fine-tune, e.g. --set distill_lr_scale=1.6667",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="folder to keep the synthetic images in between runs")
    parser.add_argument(
        "--profile", type=int, metavar="ROUNDS", help="only time the generation step, both probes alternating"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = cifar_model("resnet20")
    prepared = prepare(model, EXAMPLE)
    the_plan = Plan.from_json(Path(args.plan).read_text(), args.plan) if args.plan else None
    the_plan = the_plan or plan(prepared, to=args.to, rank=args.rank)
    if args.profile:
        return profile_probes(model, the_plan, args.profile)
    xt, yt = cifar_arrays("train10k")
    xv, yv = cifar_arrays("val5k")
    data = {"train": ArrayData(xt, yt, "train10k"), "val": ArrayData(xv, yv, "val5k"), "val_xy": (xv, yv)}
    data["settings"] = dict(typed_setting(text, FinetuneSettings()) for text in args.set)
    sources = args.sources.split(",")
    if any("synthetic" in s for s in sources):
        ratio = args.gen_step_ratio
        if ratio is None:
            ratio = round(step_cost_ratio(model, the_plan), 3)
        if ratio <= 0 and not args.count:
            parser.error("--gen-step-ratio 0 charges nothing, so it cannot size the images: give --count")
        fields = dict(typed_setting(text, SynthesisSettings()) for text in args.synthesis)
        made_with = SynthesisSettings(**fields)
        count = args.count or capped_count(args.steps, ratio, made_with)
        data["synthetic"] = synthetic_images(model, args.cache, count, fields)
        generation_steps = -(-count // made_with.batch_size) * made_with.steps
        data["generation_cost"] = round(generation_steps * ratio)  # in stage-2 steps
        facts = {"gen_step_ratio": ratio, "cost_in_steps": data["generation_cost"]}
        print(json.dumps({"synthetic": data["synthetic"].record.to_dict(), **facts}), flush=True)
    rows = []
    if "none" in args.rows:
        rows.append({"row": "no data (no fine-tune)", "top1": top1(apply(prepared, the_plan), xv, yv)})
    for kind in ("stage1", "full"):
        for source in sources if kind in args.rows else ():
            rows.append(_row(kind, source, model, the_plan, data, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))


def profile_probes(model, the_plan: Plan, rounds: int) -> None:
    """Generation step / training step with autograd's ``var_mean`` backward, with ``channel_moments``, and with
    ``channel_moments`` in a coarse step (``SynthesisSettings.coarse``), in alternating rounds on the same load;
    prints each round's ratios and their medians."""
    variants = {
        "autograd var_mean": {"moments": autograd_moments},
        "channel_moments": {"moments": channel_moments},
        "channel_moments, coarse step": {"moments": channel_moments, "coarse": True},
    }
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, how in variants.items():
            ratios[name].append(round(step_cost_ratio(model, the_plan, **how), 3))
    medians = {name: statistics.median(values) for name, values in ratios.items()}
    print(
        json.dumps(
            {
                "rounds": ratios,
                "median": medians,
                "speedup": round(medians["autograd var_mean"] / medians["channel_moments"], 3),
            }
        )
    )


def _row(kind: str, source: str, model, the_plan, data: dict, steps: int) -> dict:
    start = time.perf_counter()
    if kind == "stage1":
        row = stage1_row(source, model, the_plan, data)
    else:
        row = full_row(
            source, model, the_plan, data, steps - data.get("generation_cost", 0) * ("synthetic" in source)
        )
    row["wall s"] = round(time.perf_counter() - start, 1)
    return row


if __name__ == "__main__":
    main()
