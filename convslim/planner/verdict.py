"""What the measurements say about the model as a whole: per-layer timings, and a plain verdict when nothing
measured faster (an efficient net such as MobileNetV2 may have no layer a form speeds up on this runtime).

Example:
    >>> verdict(plan.layers, rounds=[])
    'no layer of this model gets faster on this runtime; the model is already efficient'
"""

from __future__ import annotations

NOTHING_FASTER = "no layer of this model gets faster on this runtime; the model is already efficient"
WHOLE_MODEL_SLOWER = (
    "layers measured faster alone, but every plan tried measured no faster than the original as a whole model "
    "(best {best:.2f}x); the model is kept as it is"
)


def layer_timings(layers) -> list[dict]:
    """Per measured layer: its original time, its fastest candidate and that candidate's ratio, what was chosen."""
    rows = []
    for d in layers:
        cands = [c for c in (d.measured or {}).get("candidates", []) if "ratio" in c]
        if not cands:
            continue
        best = min(cands, key=lambda c: c["ratio"])
        rows.append(
            {
                "layer": d.name,
                "original_ms": best.get("orig_ms"),
                "fastest": f"{best['form']} {best['options']}",
                "fastest_ratio": best["ratio"],
                "chosen": f"{d.form} {d.setting}" if d.form else None,
            }
        )
    return rows


def verdict(timings: list[dict], rounds: list[dict]) -> str | None:
    """``NOTHING_FASTER`` when no candidate of any layer measured faster than its layer; ``WHOLE_MODEL_SLOWER``
    when some did but no whole-model round beat the original; else None."""
    if not any(row["fastest_ratio"] < 1.0 for row in timings):
        return NOTHING_FASTER
    if rounds and max(r["measured_speedup"] for r in rounds) <= 1.0:
        return WHOLE_MODEL_SLOWER.format(best=max(r["measured_speedup"] for r in rounds))
    return None
