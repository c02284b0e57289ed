"""How far the planner's per-layer table is from the whole model: uniform selections measured whole against the
saving their layers' timings claim.

Takes a CIFAR ResNet and a plan the planner wrote (``convslim compress ... --to auto --target-speedup T``'s
``OUT/plan.json``: every conv's candidates with their measured saving), applies one (form, setting) to every
conv the table has it for (or to one stage's convs), measures the whole model against the original as the closed
loop does (``planner.whole_model.measure_plan_speedup``: batch 32, ORT's default threads, alternating blocks) and
prints, per selection, the measured speedup beside the one the summed layer savings predict,
1 / (1 − Σ saved / the original's time). Where the two part, the greedy's choice between those forms leans on
numbers the whole model does not show (README, "Planning on what it measures").

Run from the repository root, with nothing else running:
    python benchmarks/bench_table_check.py OUT/plan.json --model resnet20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import cifar_model, machine_record

from convslim.api import plan, prepare
from convslim.planner.compose import predicted_time
from convslim.planner.whole_model import WholeModelTiming, measure_plan_speedup

# (form, options, stage prefix or None for every conv the table prices it on)
SELECTIONS = [
    ("dwsep", {"rank": 1}, None),
    ("dwsep", {"rank": 2}, None),
    ("dwsep", {"rank": 3}, None),
    ("spatial", {"rank": 0.25}, "layer3"),
    ("dwsep", {"rank": 1}, "layer3"),
]


def claimed_speedup(candidates: dict, form: str, options: dict, layers: list[str], base_ms: float) -> float:
    """1 / (1 − Σ saved / base) over ``layers`` (``compose.predicted_time``, as the planner predicts), each
    priced as the plan's table priced it."""
    saved = 0.0
    for name in layers:
        match = [c for c in candidates[name] if c["form"] == form and c["options"] == options]
        saved += max(match[0].get("saved_ms") or 0.0, 0.0) if match else 0.0
    return base_ms / predicted_time(base_ms, saved)


def check(plan_file: Path, model_name: str, repeats: int) -> list[dict]:
    recorded = json.loads(plan_file.read_text())
    candidates = {d["name"]: d["measured"]["candidates"] for d in recorded["layers"] if d.get("measured")}
    base_ms = recorded["planning"]["original_ms"]
    prepared = prepare(cifar_model(model_name).eval(), (torch.randn(1, 3, 32, 32),))
    priced = [n for n in candidates if n != "conv1"]  # the stem stays (its rewrites measured slower)
    rows, original = [], None
    for repeat in range(repeats):
        for form, options, stage in SELECTIONS:
            layers = [n for n in priced if stage is None or n.startswith(stage + ".")]
            exclude = [n for n in candidates if n not in layers]
            uniform = plan(prepared, None, to=form, exclude=exclude, **options)
            timing = WholeModelTiming(batch=32, seconds=3.0)
            timed, original, _ = measure_plan_speedup(
                prepared.traced.module, uniform, prepared.example_inputs, timing, original_model=original
            )
            row = {
                "repeat": repeat,
                "selection": f"{form} {options} on {stage or 'every conv'}",
                "measured": round(timed["speedup"], 3),
                "claimed": round(claimed_speedup(candidates, form, options, layers, base_ms), 3),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path, help="a plan.json the planner wrote (compress --out's)")
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet32"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = check(args.plan, args.model, args.repeats)
    print(json.dumps({"machine": machine_record(), "rows": rows}))


if __name__ == "__main__":
    main()
