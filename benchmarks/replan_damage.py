"""Re-select a measured plan with its damage measured another way, at the same layer timings and budget.

The planner's damage is one layer at a time in the original model, after a least-squares refit of its heads, on
``PROBE_SAMPLES`` (32) calibration images. This script keeps the plan's own measured candidate timings (its
``measured`` ``candidates``, so nothing is timed here), re-measures damage, and re-runs the planner's selection
(``planner.budget.select``) for the plan's speed target at the plan's ``layer_scale``:

- ``--probes N``: the planner's damage on N images (the plan's calibration: the first training images after the
  CLI's default hold-out of train10k);
- ``--in-context``: first stage 1 on the plan as given (``finetune.reconstruct``, 256 images); then each
  option of each layer is swapped into that refitted student, refitted itself as stage 1 would, and its damage is
  the growth in the student's relative output error (images 256..767) over the layer kept dense:
  damage² = err(option)² − err(dense)².

Stage 1's accuracy of the plan written (``bench_finetune.py --plan OUT --steps 2``) is what the README compares.

Example:
    python benchmarks/replan_damage.py out/plan.json --probes 128 replanned.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model

from convslim.core import Plan, set_submodule
from convslim.core.outputs import atomic_write_text
from convslim.finetune.affine import linear_heads
from convslim.finetune.depthwise_fit import depthwise_feeds
from convslim.finetune.reconstruct import _layer_pairs, _refit, capture_input, reconstruct
from convslim.inputs.data import ArrayData
from convslim.inputs.sets import HeldOut, split_held_out
from convslim.passes.apply_plan import apply_plan
from convslim.passes.prepare import prepare
from convslim.planner import damage
from convslim.planner.budget import Choice, select
from convslim.planner.candidates import candidates_for, parse_forms
from convslim.planner.table import PlanBuilder, choice_of


def measured_candidates(prepared, source: dict) -> dict:
    """Each conv's candidates with the source plan's timings (ratio, saved_s, ...) filled in."""
    by_name = {layer["name"]: layer for layer in source["layers"]}
    per_layer = {}
    for site in prepared.sites:
        cands, _ = candidates_for(site, parse_forms(source["options"]["to"]))
        timed = (by_name[site.name].get("measured") or {}).get("candidates", [])
        found = {f"{c['form']}:{json.dumps(c['options'], sort_keys=True)}": c for c in timed}
        for c in cands:
            m = found.get(c.key, {})
            if "ratio" not in m:  # refused or failed when the plan was made: not a choice here either
                c.measured["error"] = m.get("error", "not timed in the source plan")
                continue
            seconds = {k: m[f"{k}_ms"] / 1e3 for k in ("saved", "orig", "cand")}
            c.measured.update(ratio=m["ratio"], **{f"{k}_s": v for k, v in seconds.items()})
        per_layer[site.name] = cands
    return per_layer


def in_context_table(prepared, source: dict, per_layer: dict, images: torch.Tensor) -> dict:
    teacher = prepared.traced.module.eval()
    student = apply_plan(teacher, Plan.from_json(json.dumps(source))).eval()
    batches = [(images[:128], None), (images[128:256], None)]
    reconstruct(teacher, student, [d["name"] for d in source["layers"] if d["form"]], batches)
    probe = images[256:768]
    with torch.no_grad():
        reference = teacher(probe).double()

    def error() -> float:
        with torch.no_grad():
            return float((student(probe).double() - reference).norm() / reference.norm())

    table, scale = {}, source["planning"]["layer_scale"]
    for name, cands in per_layer.items():
        planned = student.get_submodule(name)
        set_submodule(student, name, teacher.get_submodule(name))
        dense = error()
        table[name] = []
        for c in (c for c in cands if c.measured.get("ratio", 2.0) < 1.0):
            option = copy.deepcopy(c.build(teacher.get_submodule(name)))
            set_submodule(student, name, option)
            x = capture_input(student, name, images[:4])
            heads = linear_heads(option, x)
            if heads:
                pairs = _layer_pairs(teacher, student, name, batches, "cpu")
                _refit(option, heads, depthwise_feeds(option, heads, x), pairs, 2)
            grown = max(error() ** 2 - dense**2, 1e-12) ** 0.5
            table[name].append(Choice(name, c.key, c.measured["saved_s"] * scale, grown, c.measured["ratio"]))
        set_submodule(student, name, planned)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", help="a plan written by `convslim plan`/`compress` with a speed target")
    ap.add_argument("out")
    ap.add_argument("--probes", type=int, default=damage.PROBE_SAMPLES)
    ap.add_argument("--in-context", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source = json.loads(Path(args.plan).read_text())
    x, y = cifar_arrays("train10k")
    images = split_held_out(ArrayData(x, y), HeldOut())[0].x[: max(args.probes, 768)]
    prepared = prepare(cifar_model("resnet20"), (images[:1],), images[:256])
    per_layer = measured_candidates(prepared, source)
    planning, scale = source["planning"], source["planning"]["layer_scale"]
    if args.in_context:
        table = in_context_table(prepared, source, per_layer, images)
    else:
        faster = [c for cs in per_layer.values() for c in cs if c.measured.get("ratio", 2.0) < 1.0]
        damage.measure_damage(prepared.traced.module, faster, (images[: args.probes],), refit=True)
        table = {n: [choice_of(c, "target_speedup", scale) for c in cs] for n, cs in per_layer.items()}
    need = planning["original_ms"] / 1e3 * (1 - 1 / source["options"]["target_speedup"])
    chosen = select(table, need=need)
    layers, saved = PlanBuilder(prepared, per_layer, {}, {n: [] for n in per_layer}, scale)(chosen)
    plan = Plan(form="dwsep", options=source["options"], layers=layers, planning={"saved_s": saved})
    atomic_write_text(args.out, plan.to_json())
    print(" ".join(f"{d.name}:{d.setting.get('rank', d.form) if d.form else '-'}" for d in layers))


if __name__ == "__main__":
    main()
