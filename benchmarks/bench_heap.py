"""glibc malloc's thresholds raised (``convslim.core.heap.retained_heap``, as the fine-tune and the synthesis run
them) or as glibc leaves them (``--system``), for the whole process: run the two alternately and compare.

A process, not a block, per setting: once set, glibc's dynamic mmap threshold cannot be turned back on, so
blocks alternating in one process would compare against a harsher heap than a user's process starts with.
Minor page faults are counted beside the time:
- a training step of the student on ``--plan`` (teacher outputs precomputed, as phase B replays them) and of
  the original model (plain supervised training), batch 128, in alternating blocks: median milliseconds and
  faults per step;
- making ``--images`` synthetic images of ``--steps`` steps each (``inputs.synthesize``): median seconds, faults.

Run from the repository root, with nothing else running:
    for i in 1 2 3; do python benchmarks/bench_heap.py --plan benchmarks/plans/resnet20_x2.json
                       python benchmarks/bench_heap.py --plan benchmarks/plans/resnet20_x2.json --system; done
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cifar_arrays, cifar_model, machine_record
from finetune_profile import step_inputs

from convslim.core import Plan
from convslim.core.heap import retained_heap
from convslim.finetune.loop import make_optimizer
from convslim.finetune.losses import kd_loss
from convslim.finetune.settings import FinetuneSettings
from convslim.inputs.data import ArrayData
from convslim.inputs.synthetic import SynthesisSettings, synthesize


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(blocks: dict, rounds: int) -> dict:
    """Each of ``blocks`` (name → callable) once to warm up, then ``rounds`` times in alternation: median
    seconds and page faults of each."""
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in blocks}
    for block in blocks.values():
        block()
    for _ in range(rounds):
        for name, block in blocks.items():
            faults, start = _faults(), time.perf_counter()
            block()
            samples[name].append((time.perf_counter() - start, _faults() - faults))
    return {
        name: {"s": statistics.median(s for s, _ in v), "faults": statistics.median(f for _, f in v)}
        for name, v in samples.items()
    }


def training_steps(model, plan: Plan, train, rounds: int, steps: int = 4) -> dict:
    """Milliseconds and page faults per training step of the student and of the original."""
    s = FinetuneSettings()
    student, original, data, targets = step_inputs(model, plan, train, s, steps)
    nets = {"student": student.train(), "original": original}
    opts = {k: make_optimizer([p for p in m.parameters() if p.requires_grad], s) for k, m in nets.items()}

    def block(key: str) -> None:
        for i, batch in enumerate(data):
            out = nets[key](batch.x)
            opts[key].zero_grad(set_to_none=True)
            if key == "student":
                loss = kd_loss(out, targets[i], batch.y, s.temperature, s.ce_weight, s.distill_loss)
            else:
                loss = F.cross_entropy(out, batch.y)
            loss.backward()
            opts[key].step()

    timed = _timed({key: lambda key=key: block(key) for key in nets}, rounds)
    return {
        key: {"ms_per_step": round(v["s"] / steps * 1e3, 1), "faults_per_step": round(v["faults"] / steps)}
        for key, v in timed.items()
    }


def synthesis(model, images: int, steps: int, rounds: int) -> dict:
    """Seconds and page faults to make ``images`` synthetic images (the process's heap setting applies:
    ``retain_heap`` off inside)."""
    settings = SynthesisSettings(count=images, steps=steps, progress=False, retain_heap=False)
    timed = _timed({"make": lambda: synthesize(model, (torch.zeros(1, 3, 32, 32),), settings)}, rounds)
    return {"seconds": round(timed["make"]["s"], 2), "faults": timed["make"]["faults"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="plan.json of the student")
    parser.add_argument("--model", choices=["resnet20", "resnet32"], default="resnet20")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--images", type=int, default=128, help="synthetic images per timed block")
    parser.add_argument("--steps", type=int, default=20, help="synthesis steps per image")
    parser.add_argument("--system", action="store_true", help="malloc as glibc leaves it (default: retained)")
    args = parser.parse_args()
    xt, yt = cifar_arrays("train10k")
    plan = Plan.from_json(Path(args.plan).read_text(), args.plan)
    with retained_heap(not args.system) as heap:
        result = {
            "heap": heap,
            "training step": training_steps(cifar_model(args.model), plan, ArrayData(xt, yt), args.rounds),
            "synthesis": synthesis(
                cifar_model(args.model), args.images, args.steps, max(args.rounds // 2, 1)
            ),
        }
    print(json.dumps({**result, "run": machine_record()}, indent=1))


if __name__ == "__main__":
    main()
