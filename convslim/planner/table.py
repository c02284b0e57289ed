"""The planner's per-layer table: candidates gathered per conv, each turned into a selector ``Choice`` (its
saving, in seconds measured or MACs, and its damage), and a selection turned back into the plan's layer
decisions with what was measured for every candidate (the report's "tried" list).

Example:
    >>> skipped, per_layer, reasons = gather_candidates(prepared.sites, ["dwsep"], (), None)
    >>> table = {n: [choice_of(c, "target_speedup") for c in cs] for n, cs in per_layer.items()}
    >>> layers, saved_s = PlanBuilder(prepared, per_layer, skipped, reasons)(select(table, need=1e-3))
"""

from __future__ import annotations

from dataclasses import replace

from convslim.core import LayerDecision
from convslim.planner.budget import Choice
from convslim.planner.candidates import Candidate, candidates_for
from convslim.planner.uniform import decide, site_skip_reason


class PlanBuilder:
    """Turns a selection into the plan's layer decisions and the summed measured saving (seconds)."""

    def __init__(self, prepared, per_layer, skipped, reasons, scale: float = 1.0):
        self.prepared, self.per_layer, self.skipped, self.reasons = prepared, per_layer, skipped, reasons
        self.scale = scale

    def __call__(self, chosen) -> tuple[list[LayerDecision], float]:
        layers = layer_decisions(
            self.prepared.sites, self.per_layer, chosen.choice, self.skipped, self.reasons
        )
        layers += [LayerDecision.skipped(n, r) for n, r in self.prepared.traced.unconvertible.items()]
        saved = self.scale * sum(
            c.measured["saved_s"]
            for cands in self.per_layer.values()
            for c in cands
            if chosen.choice.get(c.layer) == c.key
        )
        return layers, saved


def gather_candidates(sites, forms, exclude, grid):
    skipped: dict[str, str] = {}
    per_layer: dict[str, list[Candidate]] = {}
    reasons: dict[str, list[str]] = {}
    for site in sites:
        reason = site_skip_reason(site, exclude)
        if reason is not None:
            skipped[site.name] = reason
        else:
            per_layer[site.name], reasons[site.name] = candidates_for(site, forms, grid)
    return skipped, per_layer, reasons


def macs_table(per_layer: dict[str, list[Candidate]]) -> dict[str, list[Choice]]:
    """The selector's table with MACs saved in place of time saved (options measured slower stay out): at a
    target beyond what the layer timings add up to, near-tied timings can pick a costlier option whose whole
    model measures far slower (README: 2.34x against 3.21x for ResNet-20 at x3), so the closed loop measures
    the fewest-MACs selection too before it says a target cannot be reached."""
    return {layer: [choice_of(c, "target_macs") for c in cands] for layer, cands in per_layer.items()}


def choice_of(c: Candidate, budget: str, scale: float = 1.0) -> Choice:
    m = c.measured
    if "error" in m or "damage" not in m:
        return Choice(c.layer, c.key, saving=0.0, damage=float("nan"), ratio=float("inf"))
    saving = m["saved_s"] * scale if budget != "target_macs" else float(c.dense_macs - c.macs)
    return Choice(c.layer, c.key, saving=saving, damage=m["damage"], ratio=m["ratio"])


def candidate_summary(c: Candidate) -> dict:
    m = c.measured
    if "error" in m:
        return {"form": c.form, "options": c.options, "error": m["error"]}
    return {
        "form": c.form,
        "options": c.options,
        "ratio": round(m["ratio"], 4),
        "damage": round(m["damage"], 6) if "damage" in m else None,  # None: slower, so not worth measuring
        "saved_ms": round(m["saved_s"] * 1e3, 4),
        "orig_ms": round(m["orig_s"] * 1e3, 4),
        "cand_ms": round(m["cand_s"] * 1e3, 4),
    }


def layer_decisions(sites, per_layer, choice, skipped, reasons) -> list[LayerDecision]:
    layers = []
    for site in sites:
        if site.name in skipped:
            layers.append(decide(site, None, {}, reason=skipped[site.name]))
            continue
        cands = per_layer[site.name]
        tried = [candidate_summary(c) for c in cands]
        picked = next((c for c in cands if choice.get(site.name) == c.key), None)
        if picked is None:
            decision = decide(site, None, {}, reason=why_kept(cands, reasons[site.name]))
        else:
            decision = decide(site, picked.form, picked.setting)
        measured = {"candidates": tried}
        if picked is not None:
            measured.update(
                chosen=picked.key,
                **{k: v for k, v in candidate_summary(picked).items() if k not in ("form", "options")},
            )
        layers.append(replace(decision, measured=measured))
    return layers


def why_kept(cands: list[Candidate], reasons: list[str]) -> str:
    if not cands:
        return "no form applies: " + ("; ".join(reasons[:3]) or "no candidates")
    ok = [c for c in cands if "error" not in c.measured and c.measured.get("ratio", 2.0) < 1.0]
    if not ok:
        return "every candidate measured as slow as or slower than the original layer"
    return "budget met without rewriting this layer"
