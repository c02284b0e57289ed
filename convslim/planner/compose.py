"""How per-layer timings compose into a whole-model prediction that stays meaningful.

Layers timed alone overstate their share of the model: each micro-model pays ORT's layout reorders at its input
and output, and noise only adds. On ResNet-20 the isolated layers' savings summed to 160 % of the whole model's
time, which gave ``predicted_ms`` −16.6 and a layer-sum speedup of 2.8e10. So per-layer times are scaled to the
model before they are added:

    s = min(1, t_model / Σ_l t_l · calls_l)          (t_l: layer l's original, timed alone)
    saving(candidate of l) = s · (t_l − t_candidate) · calls_l

Every candidate takes some time, so Σ savings < s · Σ_l t_l · calls_l ≤ t_model: the predicted time
``t_model − Σ savings`` is positive and the predicted speedup finite. The closed loop's multiplier μ on the
asked saving is capped at ``max_saving / need``: above it the selector already takes every layer's largest
saving, so a larger μ cannot change the selection, only the numbers in the report.

Example:
    >>> scale = layer_scale(base_s=0.018, layer_total_s=0.029)   # layers alone overstate by 60 %
    >>> round(scale, 3)
    0.621
"""

from __future__ import annotations

import math


def layer_scale(base_s: float, layer_total_s: float) -> float:
    """``min(1, base_s / layer_total_s)``; 1 when nothing was timed."""
    if layer_total_s <= 0:
        return 1.0
    return min(1.0, base_s / layer_total_s)


def layer_total(per_layer: dict) -> float:
    """Σ over layers of the original's isolated time × calls (from any measured candidate of the layer)."""
    total = 0.0
    for cands in per_layer.values():
        measured = next((c.measured for c in cands if "orig_s" in c.measured), None)
        if measured is not None:
            total += measured["orig_s"] * measured.get("calls", 1)
    return total


def predicted_time(base_s: float, saved_s: float) -> float:
    """The model's time minus the (scaled) savings; never below a thousandth of the model (a guard against a
    caller passing unscaled savings)."""
    return max(base_s - saved_s, base_s * 1e-3)


def max_multiplier(table: dict, need: float | None) -> float | None:
    """The multiplier above which the selector already takes every layer's largest usable saving."""
    if not need or need <= 0:
        return None
    best = 0.0
    for options in table.values():
        usable = [o.saving for o in options if o.ratio < 1.0 and math.isfinite(o.damage) and o.saving > 0]
        best += max(usable, default=0.0)
    return max(best / need, 1.0)
