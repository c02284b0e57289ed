"""Candidate grid: which (form, setting) pairs the planner considers for each conv.

The grid is planner policy, not form mechanism: for every form present in ``FORMS`` (and allowed by ``--to``)
we take a few options (``GRID``), turn each into a concrete setting with ``form.settings_from_options`` and keep
it when ``form.supports`` says yes. A form that rejects a grid option for a conv with a typed error
(``ConvslimError``) only loses that candidate, and the reason is kept so the plan can say why a layer was
skipped; any other exception is a bug in the form and stops planning.

Example:
    >>> cands, reasons = candidates_for(site, ["dwsep"])
    >>> [c.setting["rank"] for c in cands]
    [1, 2, 3]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from convslim.convert import FORMS
from convslim.core import ConvSite, dense_cost, no_saving_reason
from convslim.errors import ConvslimError, UsageError

# A few options per form: enough to span cheap/lossy to costly/accurate without measuring hundreds of layers.
GRID: dict[str, list[dict[str, Any]]] = {
    "dwsep": [{"rank": 1}, {"rank": 2}, {"rank": 3}],
    "spatial": [{"rank": 0.25}, {"rank": 0.5}],
    "grouped": [{"groups": 2}, {"groups": 4}, {"groups": 2, "mix": True}],
    "octave": [{"alpha": 0.25}, {"alpha": 0.5}],
}


@dataclass
class Candidate:
    """One way to rewrite one conv: its form, concrete setting, MACs/params, and (filled later) measurements."""

    layer: str
    form: str
    setting: dict[str, Any]
    options: dict[str, Any]
    macs: int
    params: int
    dense_macs: int = 0
    measured: dict[str, Any] = field(default_factory=dict)
    replacement: Any = field(default=None, repr=False, compare=False)  # built once, reused by damage

    def build(self, conv):
        if self.replacement is None:
            self.replacement = FORMS[self.form].convert(conv, self.setting).eval()
        return self.replacement

    @property
    def key(self) -> str:
        return f"{self.form}:{json.dumps(self.options, sort_keys=True)}"


def parse_forms(to: str | list[str] | tuple[str, ...]) -> list[str]:
    """``auto`` → every registered form; ``"dwsep,spatial"`` → those (each must be registered)."""
    names = [t.strip() for t in (to.split(",") if isinstance(to, str) else to) if t.strip()]
    if not names or names == ["auto"]:
        return list(FORMS)
    unknown = [n for n in names if n not in FORMS]
    if unknown:
        known = ", ".join(sorted(FORMS)) or "none"
        raise UsageError(f"--to {','.join(names)}: unknown form {unknown[0]!r}; choose auto or from {known}")
    return names


def candidates_for(
    site: ConvSite, forms: list[str], grid: dict[str, list[dict[str, Any]]] | None = None
) -> tuple[list[Candidate], list[str]]:
    """Every supported (form, setting) of the grid for ``site``, and the reasons for the ones left out."""
    grid = GRID if grid is None else grid
    dense = dense_cost(site)
    found: list[Candidate] = []
    reasons: list[str] = []
    seen: set[str] = set()
    for form_name in forms:
        form = FORMS.get(form_name)
        if form is None:
            continue
        for options in grid.get(form_name, [{}]):
            try:
                setting = form.settings_from_options(site, dict(options))
                reason = form.supports(site, setting)
                cost = form.cost(site, setting) if reason is None else None
            except ConvslimError as exc:  # a grid setting this conv cannot take; a bug still raises
                reason = f"{type(exc).__name__}: {str(exc)[:120]}"
                cost = None
            reason = reason or no_saving_reason(dense, cost, json.dumps(options, sort_keys=True))
            if reason is not None:
                reasons.append(f"{form_name}: {reason}")
                continue
            fingerprint = form_name + json.dumps(setting, sort_keys=True, default=str)
            if fingerprint in seen:  # e.g. rank 3 clipped to rank 2 on a small kernel
                continue
            seen.add(fingerprint)
            found.append(
                Candidate(site.name, form_name, setting, dict(options), cost.macs, cost.params, dense.macs)
            )
    return found, reasons
