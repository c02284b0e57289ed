"""``convslim inspect``: per-layer shapes, params and MACs (standard C·K²·M·H'W' formula), and for each form the
cost at the given settings or the reason it would skip the layer. Nothing is rewritten.

Example:
    >>> rows = inspect_rows(prepare(model, inputs), ["dwsep"], {"rank": 1})
"""

from __future__ import annotations

from typing import Any

from convslim.convert import get_form
from convslim.core import Prepared, dense_cost
from convslim.planner.uniform import site_skip_reason


def options_per_form(forms: list[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each form's options in force (its own share of ``options``, checked); an option no form takes is refused."""
    per_form = {}
    for name in forms:
        form = get_form(name)
        own = {o.name for o in form.options}
        per_form[name] = form.check_options({k: v for k, v in options.items() if k in own})
    for key in options:
        if not any(key in given for given in per_form.values()):
            get_form(forms[0]).check_options({key: options[key]})  # raises: names the form's own options
    return per_form


def inspect_rows(prepared: Prepared, forms: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    per_form = options_per_form(forms, options)
    rows = []
    for site in prepared.sites:
        cost = dense_cost(site)
        conv = site.conv
        row = {
            "name": site.name,
            "type": type(conv).__name__,
            "in_shape": list(site.in_shape),
            "out_shape": list(site.out_shape),
            "kernel": list(getattr(conv, "kernel_size", ())),
            "stride": list(getattr(conv, "stride", ())),
            "groups": getattr(conv, "groups", 1),
            "calls": len(site.calls),
            "params": cost.params,
            "macs": cost.macs,
            "forms": {},
        }
        unreached = site_skip_reason(site)
        for name in forms:
            form = get_form(name)
            setting = form.settings_from_options(site, per_form[name]) if unreached is None else {}
            reason = form.supports(site, setting) if unreached is None else unreached
            if reason:
                row["forms"][name] = {"skipped_reason": reason}
            else:
                after = form.cost(site, setting)
                row["forms"][name] = {"setting": setting, "params": after.params, "macs": after.macs}
        rows.append(row)
    for node_name, reason in prepared.traced.unconvertible.items():
        rows.append(
            {
                "name": node_name,
                "type": "F.conv2d",
                "in_shape": [],
                "out_shape": [],
                "kernel": [],
                "stride": [],
                "groups": 1,
                "calls": 1,
                "params": 0,
                "macs": 0,
                "forms": {n: {"skipped_reason": reason} for n in forms},
            }
        )
    return rows


def inspect_table(rows: list[dict[str, Any]], forms: list[str]) -> str:
    header = ["layer", "in → out", "k", "s", "g", "params", "MACs"] + [f"{f} MACs (params)" for f in forms]
    lines = [header]
    totals = {"params": 0, "macs": 0, **{f: [0, 0] for f in forms}}
    for r in rows:
        line = [
            r["name"],
            f"{_s(r['in_shape'])} → {_s(r['out_shape'])}",
            _s(r["kernel"]),
            _s(r["stride"]),
            str(r["groups"]),
            f"{r['params']:,}",
            f"{r['macs']:,}",
        ]
        totals["params"] += r["params"]
        totals["macs"] += r["macs"]
        for f in forms:
            entry = r["forms"][f]
            if "skipped_reason" in entry:
                line.append(f"skip: {entry['skipped_reason']}")
                totals[f][0] += r["macs"]
                totals[f][1] += r["params"]
            else:
                line.append(f"{entry['macs']:,} ({entry['params']:,})")
                totals[f][0] += entry["macs"]
                totals[f][1] += entry["params"]
        lines.append(line)
    total = ["total", "", "", "", "", f"{totals['params']:,}", f"{totals['macs']:,}"]
    for f in forms:
        ratio = totals[f][0] / totals["macs"] if totals["macs"] else 0
        total.append(f"{totals[f][0]:,} ({totals[f][1]:,}) = {ratio:.1%} MACs")
    lines.append(total)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    )


def _s(values) -> str:
    return "×".join(map(str, values)) if values else "-"
