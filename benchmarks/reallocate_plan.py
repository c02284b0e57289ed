"""Other rank allocations of a dwsep plan at the same summed layer timings, for the rank-allocation ablation.

Every dwsep layer starts at rank 1; ranks are then raised one step at a time, layer by layer in the given order
(first to last: ``early``, last to first: ``late``) and round after round, keeping each raise that leaves the
summed candidate timings (the plan's own ``measured`` ``cand_ms``) within those of the plan's ranks. Only the
ranks change: the MACs and parameter counts stay as the planner wrote them for its ranks (a report of the
reallocated plan shows those), so read only accuracy from such a run.

Example:
    python benchmarks/reallocate_plan.py benchmarks/plans/resnet20_x2.json late benchmarks/plans/resnet20_x2_late.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from convslim.core.outputs import atomic_write_text


def candidate_ms(layer: dict, rank: int) -> float:
    for cand in layer["measured"]["candidates"]:
        if cand["form"] == "dwsep" and cand["options"].get("rank") == rank:
            return cand["cand_ms"]
    raise SystemExit(f"{layer['name']}: the plan holds no timing of dwsep rank {rank}")


def reallocate(plan: dict, order: str, most: int = 3) -> dict[str, int]:
    layers = {layer["name"]: layer for layer in plan["layers"] if layer["form"] == "dwsep"}
    budget = sum(candidate_ms(layer, layer["setting"]["rank"]) for layer in layers.values())
    ranks = dict.fromkeys(layers, 1)
    names = list(layers) if order == "early" else list(reversed(layers))
    raised = True
    while raised:
        raised = False
        for name in names:
            if ranks[name] >= most:
                continue
            ranks[name] += 1
            if sum(candidate_ms(layers[n], r) for n, r in ranks.items()) <= budget + 1e-9:
                raised = True
            else:
                ranks[name] -= 1
    return ranks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan", type=Path)
    p.add_argument("order", choices=("early", "late"))
    p.add_argument("out", type=Path)
    args = p.parse_args()
    plan = json.loads(args.plan.read_text())
    ranks = reallocate(plan, args.order)
    moved = copy.deepcopy(plan)
    for layer in moved["layers"]:
        if layer["name"] in ranks:
            layer["setting"]["rank"] = ranks[layer["name"]]
    atomic_write_text(args.out, json.dumps(moved))
    print(args.order, list(ranks.values()))


if __name__ == "__main__":
    main()
