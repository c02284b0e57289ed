"""Choosing one candidate (or none) per layer to meet a budget with the least total damage.

Method: greedy multiple-choice knapsack on marginal efficiency. Every layer starts at "keep the original".
Damage adds as error energy (Σ damage², i.e. independent per-layer errors; the predicted model error is
√Σ damage²). Each step takes, over all layers, the upgrade (a candidate that saves more than the layer's current
choice) with the largest Δsaving / Δenergy; an upgrade that saves more *and* damages less is taken first.

- ``need`` (speedup or MAC budgets): upgrade until Σ saving ≥ need, then a trim pass walks the chosen layers
  from most to least damaging and moves each to the least-damaging option that still meets the need (the
  greedy's last step usually overshoots).
- ``max_energy`` (error budget): only upgrades that keep Σ damage² ≤ max_energy, until none fits (the most
  saving the error budget allows).

An option whose measured latency ratio is ≥ 1 (or that saves nothing) is never chosen.

Example:
    >>> table = {"a": [Choice("a", "dwsep:1", saving=2.0, damage=0.1, ratio=0.5)]}
    >>> select(table, need=1.0).choice
    {'a': 'dwsep:1'}
"""

from __future__ import annotations

from dataclasses import dataclass, field

EPS = 1e-18


@dataclass(frozen=True)
class Choice:
    """One candidate of one layer as the selector sees it: what it saves (budget units) and its damage."""

    layer: str
    key: str
    saving: float
    damage: float
    ratio: float = 0.0  # measured latency ratio candidate / original

    @property
    def energy(self) -> float:
        return self.damage**2


@dataclass
class Selection:
    choice: dict[str, str] = field(default_factory=dict)  # layer → option key (layers kept are absent)
    saving: float = 0.0
    energy: float = 0.0
    reached: bool = True

    @property
    def predicted_error(self) -> float:
        return self.energy**0.5


def eligible(options: list[Choice]) -> list[Choice]:
    """Drop options that measure slower than (or as fast as) the original layer, or save nothing."""
    return [o for o in options if o.ratio < 1.0 and o.saving > 0 and o.damage == o.damage]  # NaN check


def select(
    table: dict[str, list[Choice]], need: float | None = None, max_energy: float | None = None
) -> Selection:
    """Greedy choice per layer; exactly one of ``need`` (saving to reach) or ``max_energy`` should be given."""
    options = {layer: eligible(opts) for layer, opts in table.items()}
    current: dict[str, Choice | None] = {layer: None for layer in options}
    saving = energy = 0.0
    while need is None or saving < need:
        step = _best_upgrade(options, current, energy, max_energy)
        if step is None:
            break
        old = current[step.layer]
        saving += step.saving - (old.saving if old else 0.0)
        energy += step.energy - (old.energy if old else 0.0)
        current[step.layer] = step
    reached = need is None or saving >= need
    if need is not None and reached:
        saving, energy = _trim(options, current, need, saving, energy)
    choice = {layer: opt.key for layer, opt in current.items() if opt is not None}
    return Selection(choice=choice, saving=saving, energy=energy, reached=reached)


def _best_upgrade(options, current, energy: float, max_energy: float | None) -> Choice | None:
    best, best_score = None, -1.0
    for layer, opts in options.items():
        old = current[layer]
        old_saving, old_energy = (old.saving, old.energy) if old else (0.0, 0.0)
        for opt in opts:
            gain, cost = opt.saving - old_saving, opt.energy - old_energy
            if gain <= 0:
                continue
            if max_energy is not None and energy + cost > max_energy + EPS:
                continue
            score = float("inf") if cost <= 0 else gain / cost
            if score > best_score:
                best, best_score = opt, score
    return best


def _trim(options, current, need: float, saving: float, energy: float) -> tuple[float, float]:
    """Move each chosen layer (most damaging first) to its least-damaging option that still meets ``need``."""
    chosen = sorted((o for o in current.values() if o is not None), key=lambda o: -o.energy)
    for opt in chosen:
        alternatives = [None] + sorted(options[opt.layer], key=lambda o: o.energy)
        for alt in alternatives:
            alt_saving, alt_energy = (alt.saving, alt.energy) if alt else (0.0, 0.0)
            if alt_energy >= opt.energy:
                break
            if saving - opt.saving + alt_saving >= need:
                saving += alt_saving - opt.saving
                energy += alt_energy - opt.energy
                current[opt.layer] = alt
                break
    return saving, energy


def blend(table: dict[str, list[Choice]], slow: Selection, fast: Selection) -> Selection | None:
    """A selection between ``slow`` and ``fast``: half of the layers where they differ take ``fast``'s choice,
    those whose switch buys the most saving per unit of added error energy first. None if they differ in
    fewer than two layers (nothing lies between them).

    The greedy's selections jump as the need grows (its trim pass re-balances many layers at once), so when the
    whole-model speedups of two neighbouring selections straddle the target, this bisects between them.
    """
    index = {(o.layer, o.key): o for opts in table.values() for o in opts}

    def option(selection: Selection, layer: str) -> Choice | None:
        key = selection.choice.get(layer)
        return None if key is None else index[(layer, key)]

    def gain_per_energy(layer: str) -> float:
        old, new = option(slow, layer), option(fast, layer)
        gain = (new.saving if new else 0.0) - (old.saving if old else 0.0)
        cost = (new.energy if new else 0.0) - (old.energy if old else 0.0)
        return float("inf") if cost <= 0 else gain / cost

    differing = [layer for layer in table if slow.choice.get(layer) != fast.choice.get(layer)]
    if len(differing) < 2:
        return None
    switched = sorted(differing, key=gain_per_energy, reverse=True)[: len(differing) // 2]
    choice = dict(slow.choice)
    for layer in switched:
        if layer in fast.choice:
            choice[layer] = fast.choice[layer]
        else:
            choice.pop(layer, None)
    picked = [index[(layer, key)] for layer, key in choice.items()]
    return Selection(
        choice=choice,
        saving=sum(o.saving for o in picked),
        energy=sum(o.energy for o in picked),
        reached=True,
    )
