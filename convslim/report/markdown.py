"""``report.md``: the report as Markdown tables, section by section (summary, layers, verification, latency,
deployment, planning, fine-tuning, notes, time, run).

Example:
    >>> (out / "report.md").write_text(report_markdown(report))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from convslim.report.deploy import deploy_markdown


def report_markdown(report) -> str:
    """The whole of ``report.md`` for ``report`` (a ``convslim.report.Report``)."""
    out = [f"# convslim report: `{report.form}`", "", "## Summary", "", "```", report.summary(), "```", ""]
    out += [
        "## Layers",
        "",
        "| layer | form | setting | in → out | params | MACs | rel. weight err | skipped because |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layer in report.layers:
        setting = ", ".join(f"{k}={v}" for k, v in layer["setting"].items()) or "—"
        shapes = f"{_shape(layer['in_shape'])} → {_shape(layer['out_shape'])}"
        err = "—" if layer["rel_weight_error"] is None else f"{layer['rel_weight_error']:.3f}"
        out.append(
            f"| {layer['name']} | {layer['form'] or '—'} | {setting} | {shapes} | "
            f"{layer['params_before']:,} → {layer['params_after']:,} | "
            f"{layer['macs_before']:,} → {layer['macs_after']:,} | {err} | {layer['skipped_reason'] or ''} |"
        )
    t = report.totals
    out.append(
        f"| **total** | | | | {t['params_before']:,} → {t['params_after']:,} | "
        f"{t['macs_before']:,} → {t['macs_after']:,} | | |"
    )
    out += ["", "## Verification", ""]
    out += _dict_table(report.parity)
    for provider, per_batch in report.latency_tables().items():
        out += ["", f"### Latency: {provider}", ""]
        if "skipped" in per_batch:
            out.append(f"skipped: {per_batch['skipped']}")
            continue
        out += [
            "| batch | original ms | compressed ms | speedup | spread (orig / comp) | runs |",
            "|---|---|---|---|---|---|",
        ]
        for batch, v in per_batch.items():
            out.append(
                f"| {batch} | {v['latency_ms_original']:.3f} | {v['latency_ms_compressed']:.3f} | "
                f"{v['speedup']:.2f}x | {v['spread_original']:.1%} / {v['spread_compressed']:.1%} | "
                f"{v['runs']} |"
            )
    out += deploy_markdown(report.deploy)
    if report.planning:
        shown = {k: v for k, v in report.planning.items() if k != "layer_timings"}
        out += ["", "## Planning", "", report.planning_line(), ""] + _dict_table({"planning": shown})
        out += _timings_markdown(report.planning.get("layer_timings") or [])
    if report.finetune:
        out += ["", "## Fine-tuning", ""] + _dict_table({"finetune": report.finetune})
        out += _finetune_markdown(report.finetune)
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    if report.timings_s:
        out += ["", "## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in report.timings_s.items()]
    out += _run_markdown(report.run, report.options)
    return "\n".join(out) + "\n"


def _shape(shape: list[int]) -> str:
    return "×".join(map(str, shape)) if shape else "?"


def _dict_table(sections: dict[str, Any]) -> list[str]:
    lines = ["| check | value |", "|---|---|"]
    for section, values in sections.items():
        if not isinstance(values, Mapping):
            lines.append(f"| {section} | {values} |")
            continue
        for key, value in values.items():
            if isinstance(value, Mapping):
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"| {section}.{key} | {shown} |")
    return lines


def _timings_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Per-layer ORT timings from planning: the original layer, its fastest candidate, what was chosen."""
    if not rows:
        return []
    out = [
        "",
        "### Per-layer timings (ORT, planning batch)",
        "",
        "| layer | original ms | fastest candidate | its time / original | chosen |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ms = "?" if r.get("original_ms") is None else f"{r['original_ms']:.4f}"
        out.append(
            f"| {r['layer']} | {ms} | {r['fastest']} | {r['fastest_ratio']:.2f} | {r['chosen'] or 'kept'} |"
        )
    return out


def _finetune_markdown(finetune: dict[str, Any]) -> list[str]:
    """Accuracy per stage and stage 1's per-layer errors (issue 5); empty when fine-tuning did not record them.
    A fine-tune without data says so first."""
    data = finetune.get("data") or {}
    out = (
        ["", f"Fine-tuned **without training data**, on {data['described']}."]
        if data.get("kind") == "synthetic"
        else []
    )
    accuracy = finetune.get("accuracy") or {}
    if accuracy.get("metric"):
        out += ["", f"### {accuracy['metric']} on the validation data", "", "| model | score |", "|---|---|"]
        for key in ("original", "compressed", "stage1", "stage2"):
            if accuracy.get(key) is not None:
                out.append(f"| {key} | {accuracy[key]:.2%} |")
    layers = (finetune.get("stage1") or {}).get("layers") or []
    if layers:
        out += [
            "",
            "### Stage 1: layer output error (relative L2)",
            "",
            "| layer | method | before | after |",
        ]
        out.append("|---|---|---|---|")
        out += [
            f"| {r['layer']} | {r['method']} | {r['error_before']:.3f} | {r['error_after']:.3f} |"
            for r in layers
        ]
    return out


def _run_markdown(run: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """The "Run" section: how this report was made (command, input, every option in force, versions, CPU)."""
    if not run:
        return []
    out = ["", "## Run", ""]
    for key in ("command", "model", "arch", "input_shape", "input_shapes", "cpu", "threads"):
        if run.get(key) is not None:
            out.append(f"- {key.replace('_', ' ')}: `{run[key]}`")
    versions = run.get("versions") or {}
    if versions:
        out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    settings = {f"form.{k}": v for k, v in options.items()}
    settings.update({f"compress.{k}": v for k, v in (run.get("compress_options") or {}).items()})
    settings.update({f"cli.{k}": v for k, v in (run.get("cli_options") or {}).items()})
    if settings:
        out += ["", "| option | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in settings.items()]
    return out
