"""The deployment part of the report: accuracy and latency of original and compressed, fp32 and int8, with
speedups against the fp32 original and the int8 original, and the nodes int8 kept in fp32.

Example:
    >>> print("\\n".join(deploy_lines(report.deploy)))
"""

from __future__ import annotations

import re
from typing import Any

from convslim.core.samples import MEANINGFUL_SCORE, too_few

MODELS = ("original_fp32", "original_int8", "compressed_fp32", "compressed_int8")


def deploy_lines(deploy: dict[str, Any] | None) -> list[str]:
    """Terminal summary lines: one for accuracy, one per timed batch size."""
    if not deploy:
        return []
    lines = []
    acc = deploy.get("accuracy")
    if acc:
        parts = [f"{m} {acc[m]:.2%}" for m in MODELS if m in acc]
        shown = ", ".join(parts) if acc["n"] >= MEANINGFUL_SCORE else too_few(acc["n"], acc["metric"])
        lines.append(f"  {acc['metric']} on {acc['data']} ({acc['n']} images): " + shown)
    for batch, entry in (deploy.get("speed") or {}).items():
        lat = entry["latency"]
        if len(lat) <= 2:  # the fp32 pair alone: the ort_cpu line says it (``fp32_pair``)
            continue
        parts = [f"{m} {lat[m]['ms']:.2f} ms" for m in MODELS if m in lat]
        speed = [
            f"{_short(name)} {v['speedup']:.2f}x vs {_short(ref[3:])}"
            for ref, versus in entry["speedup"].items()
            for name, v in versus.items()
            if name.startswith("compressed") or ref == "vs_original_fp32"
        ]
        lines.append(f"  {deploy['runtime']} batch {batch}: " + ", ".join(parts) + "; " + ", ".join(speed))
    steady = one_thread_text(deploy)
    if steady:
        lines.append(f"  {steady}")
    advice = deploy.get("recommended")
    if advice:
        lines.append(f"  deploy {advice['file']}: {advice['why']}")
    for model, item in (deploy.get("int8") or {}).items():
        lines += [f"  int8 ({model}): {line}" for line in excluded_lines(item.get("excluded", []))]
    return lines


def one_thread_text(deploy: dict[str, Any]) -> str | None:
    """The fp32 pair's speedups on one ORT thread per session, as one sentence (None when not timed)."""
    steady = deploy.get("speed_one_thread")
    if not steady:
        return None
    parts = ", ".join(f"batch {b}: {v['speedup']:.2f}x" for b, v in steady.items())
    return (
        f"one ORT thread per session (steady on a shared machine; --plan-threads 1 plans this way): {parts}"
    )


def fp32_pair(entry: dict) -> dict:
    """One batch of ``deploy["speed"]`` as the compressed-vs-original fp32 pair the summary and Markdown show."""
    lat = entry["latency"]
    pair = {
        "latency_ms_original": lat["original_fp32"]["ms"],
        "latency_ms_compressed": lat["compressed_fp32"]["ms"],
        **entry["speedup"]["vs_original_fp32"]["compressed_fp32"],
        "spread_original": lat["original_fp32"]["spread"],
        "spread_compressed": lat["compressed_fp32"]["spread"],
    }
    if "warning" in entry:
        pair["warning"] = entry["warning"]
    return pair


def excluded_lines(excluded: list[dict]) -> list[str]:
    """The nodes int8 kept in fp32, one line per kind and reason; ratios that differ become a range.

    Example:
        >>> excluded_lines([{"node": "a", "kind": "depthwise conv", "reason": "int8 measured 1.5x ..."},
        ...                 {"node": "b", "kind": "depthwise conv", "reason": "int8 measured 2.6x ..."}])
        ['2 depthwise convs kept in fp32: int8 measured 1.5-2.6x ...']
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for entry in excluded:
        template = _RATIO.sub("{x}", entry["reason"])
        groups.setdefault((entry["kind"], template), []).append(entry)
    lines = []
    for (kind, template), entries in groups.items():
        if len(entries) == 1:
            lines.append(f"{entries[0]['node']} ({kind}) kept in fp32: {entries[0]['reason']}")
            continue
        ratios = sorted(float(m) for e in entries for m in _RATIO.findall(e["reason"]))
        span = f"{ratios[0]:.2f}x" if ratios[0] == ratios[-1] else f"{ratios[0]:.2f}-{ratios[-1]:.2f}x"
        reason = template.replace("{x}", span, 1) if ratios else template
        lines.append(f"{len(entries)} {kind}s kept in fp32: {reason}")
    return lines


_RATIO = re.compile(r"(\d+\.\d+)x")


def _short(name: str) -> str:
    return name.replace("original_", "orig ").replace("compressed_", "comp ")


def deploy_markdown(deploy: dict[str, Any] | None) -> list[str]:
    """The deployment section of report.md."""
    if not deploy:
        return []
    out = ["", f"## Deployment: `{deploy['runtime']}` ({deploy['precision']})", ""]
    export = deploy.get("export", {})
    out.append(
        f"Export: opset {export.get('opset') or 'default'}, static shape {export.get('static_shape')}."
    )
    acc = deploy.get("accuracy")
    if acc:
        out += ["", f"### {acc['metric']} on {acc['data']} ({acc['n']} images)", "", "| model | score |"]
        out += ["|---|---|"] + [f"| {m} | {acc[m]:.2%} |" for m in MODELS if m in acc]
        if acc["n"] < MEANINGFUL_SCORE:
            out.append(f"\n{too_few(acc['n'], acc['metric'])}.")
    for batch, entry in (deploy.get("speed") or {}).items():
        out += ["", f"### Latency at batch {batch}", ""]
        refs = list(entry["speedup"])
        out.append("| model | ms | spread | runs | " + " | ".join(f"speedup {r} (IQR)" for r in refs) + " |")
        out.append("|---|---|---|---|" + "---|" * len(refs))
        for m in (m for m in MODELS if m in entry["latency"]):
            lat = entry["latency"][m]
            cells = [_speedup_cell(entry["speedup"][r].get(m)) for r in refs]
            out.append(
                f"| {m} | {lat['ms']:.3f} | {lat['spread']:.1%} | {lat['runs']} | " + " | ".join(cells) + " |"
            )
        if "warning" in entry:
            out.append(f"\n{entry['warning']}")
    steady = one_thread_text(deploy)
    if steady:
        out += ["", f"Speedup of the fp32 pair with {steady}."]
    advice = deploy.get("recommended")
    if advice:
        out += ["", f"**Deploy `{advice['file']}`**: {advice['why']}."]
    for kind, item in (deploy.get("int8") or {}).items():
        out += ["", f"### int8 ({kind})", "", f"Settings: {item['settings']}", ""]
        out.append(f"{item['quantized_nodes']} of {item['int8_nodes_total']} conv/linear nodes in int8.")
        if item["excluded"]:
            out += ["", "| node kept in fp32 | kind | reason |", "|---|---|---|"]
            out += [f"| {e['node']} | {e['kind']} | {e['reason']} |" for e in item["excluded"]]
        out += [f"- note: {n}" for n in item.get("notes", [])]
    return out


def _speedup_cell(value: dict | None) -> str:
    if value is None:
        return "—"
    low, high = value["speedup_iqr"]
    return f"{value['speedup']:.2f}x ({low:.2f}–{high:.2f}, {value['rounds']} rounds)"
