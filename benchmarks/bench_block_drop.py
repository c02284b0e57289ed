"""Dropping whole residual blocks instead of thinning every conv (issue 25, ResNet-32 at x3): a measurement, not a
convslim feature yet.

A CIFAR ResNet block whose shortcut is the identity computes relu(x + branch(x)) on an x that is already a ReLU
output, so without its branch it is the identity: the block and its two convs go, and the convs left are rewritten
as usual (uniform dwsep here). The student is then fine-tuned by the library's hook against the *whole* original
(stage 1 refits each rewritten conv on the student's own inputs, which absorbs the dropped blocks; stage 2
distils end to end). ResNet-32 has 15 blocks of about equal MACs (each 1/15 of the conv MACs; the first of stages
2 and 3 a little less), so dropping 6 and rank-2 dwsep on the rest leaves about the MACs of rank-1 dwsep
everywhere (18 %).

``--probe`` prints the top-1 on 2,000 train10k images with each stride-1 block dropped alone (which to drop);
otherwise one fine-tune on a step budget, top-1 on all 5,000 val5k images of the final weights.

Run from the repository root (needs ../shared/data):
    python benchmarks/bench_block_drop.py --model resnet32 --probe
    python benchmarks/bench_block_drop.py --model resnet32 --drop layer2.1,layer2.2,layer2.3,layer2.4,layer3.3,layer1.3 \
        --rank 2 --steps 1500 --threads 1
    python benchmarks/bench_block_drop.py --model resnet32 --rank 1 --steps 1500 --threads 1     # the baseline
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from common import cifar_arrays, cifar_model, top1
from torch import nn

from convslim import apply, plan, prepare
from convslim.core import dense_cost
from convslim.finetune import finetune
from convslim.inputs.data import ArrayData

EXAMPLE = (torch.randn(1, 3, 32, 32),)


def without_blocks(model: nn.Module, blocks: list[str]) -> nn.Module:
    """``model`` with each named block (``layer2.1``) replaced by the identity, in place; refuses a block whose
    shortcut is not the identity (the first of a stage changes the shape)."""
    for name in blocks:
        stage, index = name.split(".")
        block = getattr(model, stage)[int(index)]
        if not isinstance(block.shortcut, nn.Identity):
            raise SystemExit(f"--drop {name}: its shortcut is not the identity, so the block cannot go")
        getattr(model, stage)[int(index)] = nn.Identity()
    return model


def probe(name: str) -> None:
    model = cifar_model(name)
    x, y = (t[::5] for t in cifar_arrays("train10k"))
    print(json.dumps({"block": None, "top1": round(top1(model, x, y), 4)}), flush=True)
    for stage in ("layer1", "layer2", "layer3"):
        for index in range(1, len(getattr(model, stage))):
            dropped = without_blocks(copy.deepcopy(model), [f"{stage}.{index}"])
            print(
                json.dumps({"block": f"{stage}.{index}", "top1": round(top1(dropped, x, y), 4)}), flush=True
            )


def run(args) -> dict:
    original = prepare(cifar_model(args.model), EXAMPLE)
    blocks = [b for b in args.drop.split(",") if b]
    student = prepare(without_blocks(cifar_model(args.model), blocks), EXAMPLE)
    the_plan = plan(student, to="dwsep", exclude=["conv1"], rank=args.rank)
    compressed = apply(student, the_plan)
    (xt, yt), (xv, yv) = cifar_arrays("train10k"), cifar_arrays("val5k")
    hook = finetune(
        ArrayData(xt, yt), ArrayData(xv, yv), steps=args.steps, seed=args.seed, evals=1, progress=False
    )
    start = time.perf_counter()
    tuned, report = hook(original, compressed, the_plan)
    # the dropped blocks' convs are in no plan: what is left over all the original's convs
    macs_left = sum(d.macs_after for d in the_plan.layers) / sum(dense_cost(s).macs for s in original.sites)
    return {
        "model": args.model,
        "dropped": blocks,
        "rank": args.rank,
        "steps": args.steps,
        "seed": args.seed,
        "conv_macs": round(macs_left, 4),
        "top1 stage1": report["accuracy"]["stage1"],
        "top1": round(top1(tuned, xv, yv), 4),
        "finetune s": round(time.perf_counter() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet32", choices=["resnet20", "resnet32"])
    parser.add_argument("--probe", action="store_true", help="top-1 with each block dropped alone, then stop")
    parser.add_argument("--drop", default="", help="blocks to drop, e.g. layer2.1,layer3.3")
    parser.add_argument("--rank", type=int, default=2, help="dwsep rank of every conv left but the first")
    parser.add_argument(
        "--steps", type=int, default=1500, help="stage-2 steps (ResNet-32: ~1,500 = 10 minutes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        probe(args.model)
    else:
        print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
