"""The compression report: one dict (``report.json``), the same as Markdown tables (``report.md``), and a short
terminal summary. Every number in it was computed or measured in this run.

Example:
    >>> print(report.summary())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from convslim.core import Plan
from convslim.report.deploy import deploy_lines, deploy_markdown


@dataclass
class Report:
    form: str
    options: dict[str, Any]
    trace_mode: str
    layers: list[dict[str, Any]]
    totals: dict[str, int]
    notes: list[str] = field(default_factory=list)
    batchnorm_folded: int = 0
    parity: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    passed: bool | None = None
    planning: dict[str, Any] | None = None  # budgeted plans: budget, predicted speedup/error, planning time
    deploy: dict[str, Any] | None = None  # runtime target, int8 details, accuracy and speed of every model
    run: dict[str, Any] = field(default_factory=dict)  # command line, input, every option, versions, CPU

    @classmethod
    def from_plan(cls, plan: Plan, trace_mode: str, weight_errors: dict[str, float | None]) -> Report:
        layers = []
        for d in plan.layers:
            layers.append(
                {
                    "name": d.name,
                    "form": d.form,
                    "setting": brief_setting(d.setting),
                    "skipped_reason": d.skipped_reason,
                    "weight_shape": d.weight_shape,
                    "in_shape": d.in_shape,
                    "out_shape": d.out_shape,
                    "params_before": d.params_before,
                    "params_after": d.params_after,
                    "macs_before": d.macs_before,
                    "macs_after": d.macs_after,
                    "rel_weight_error": weight_errors.get(d.name),
                }
            )
        totals = {
            k: sum(layer[k] for layer in layers)
            for k in ("params_before", "params_after", "macs_before", "macs_after")
        }
        return cls(form=plan.form, options=plan.options, trace_mode=trace_mode, layers=layers, totals=totals)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        t = self.totals
        rewritten = sum(1 for layer in self.layers if layer["form"])
        lines = [
            f"convslim: {rewritten}/{len(self.layers)} convs rewritten to {self.form} "
            f"(trace: {self.trace_mode}, BatchNorm folded: {self.batchnorm_folded})",
            f"  conv MACs {_ratio(t['macs_after'], t['macs_before'])}, conv params "
            f"{_ratio(t['params_after'], t['params_before'])}",
        ]
        if "onnx_vs_torch" in self.parity:
            p = self.parity["onnx_vs_torch"]
            mark = "ok" if p["passed"] else "FAILED"
            floor = ""
            if "floor_max_abs_err" in p:
                floor = (
                    f"; the original's own error {p['floor_max_abs_err']:.2e}, allowed "
                    f"{p['allowed_err']:.2e} = max(tolerance, {p['floor_multiple']:g}x that)"
                )
            lines.append(
                f"  ONNX vs PyTorch: max abs err {p['max_abs_err']:.2e} (tolerance {p['tolerance']:.2e}{floor}) "
                f"{mark}"
            )
        if "compressed_vs_original" in self.parity:
            c = self.parity["compressed_vs_original"]
            agree = "" if c["top1_agreement"] is None else f", top-1 agreement {c['top1_agreement']:.1%}"
            on = f" on {c['inputs']}" if c.get("inputs") else ""
            lines.append(
                f"  compressed vs original{on}: rel L2 {c['rel_l2']:.3f}, cosine {c['cosine']:.4f}{agree}"
            )
            if not agrees(c):
                lines.append(
                    "  WARNING: the compressed model no longer agrees with the original; fine-tune it with --data "
                    "(or choose a milder setting, e.g. a higher --rank) before using it"
                )
        for provider, per_batch in self.speed.items():
            if "skipped" in per_batch:
                reason = per_batch["skipped"]
                shown = (
                    reason if reason.startswith("speed not measured") else f"{provider}: skipped ({reason})"
                )
                lines.append(f"  {shown}")
                continue
            parts = [f"batch {b}: {v['speedup']:.2f}x" for b, v in per_batch.items()]
            lines.append(f"  {provider} speedup vs BN-folded original: " + ", ".join(parts))
        lines.extend(deploy_lines(self.deploy))
        if self.planning:
            lines.append("  " + self.planning_line())
            if self.planning.get("verdict"):
                lines.append(f"  {self.planning['verdict']}")
        if self.finetune:
            lines.append(
                "  fine-tuning: " + ", ".join(f"{k} {v}" for k, v in self.finetune.get("summary", {}).items())
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def measured_speedup(self) -> float | None:
        """The ORT speedup measured after applying, at the batch the plan was made for (None if not timed)."""
        if not self.planning:
            return None
        return self.speedups().get(str(self.planning.get("batch")))

    def speedups(self) -> dict[str, float]:
        """The measured ORT speedup at each timed batch size, for what a plan was made on: the compressed int8
        model against the fp32 original when it planned in int8, the CUDA pair when it planned on CUDA, else the
        fp32 pair on CPU ({} if not timed)."""
        planning = self.planning or {}
        if planning.get("precision") == "int8":
            speed = (self.deploy or {}).get("speed") or {}
            pairs = {
                b: e.get("speedup", {}).get("vs_original_fp32", {}).get("compressed_int8")
                for b, e in speed.items()
            }
            return {b: v["speedup"] for b, v in pairs.items() if v}
        provider = "ort_cuda" if "CUDA" in planning.get("provider", "") else "ort_cpu"
        entries = self.speed.get(provider, {}).items()
        return {b: e["speedup"] for b, e in entries if isinstance(e, dict) and "speedup" in e}

    def planning_line(self) -> str:
        p = self.planning
        budget = ", ".join(f"{k} {v}" for k, v in p.get("budget", {}).items())
        measured = self.measured_speedup()
        shown = "not measured" if measured is None else f"{measured:.2f}x"
        reached = "" if p.get("reached", True) else " (budget NOT reachable with these forms)"
        return (
            f"plan ({budget}{reached}): predicted {p['predicted_speedup']:.2f}x at batch {p['batch']}, "
            f"measured {shown}; predicted output error {p['predicted_error']:.3f}; planning "
            f"{p['planning_s']:.1f} s (latency cache {p['cache_hits']} hits / {p['cache_misses']} misses)"
        )

    def to_markdown(self) -> str:
        out = [f"# convslim report: `{self.form}`", "", "## Summary", "", "```", self.summary(), "```", ""]
        out += [
            "## Layers",
            "",
            "| layer | form | setting | in → out | params | MACs | rel. weight err | skipped because |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for layer in self.layers:
            setting = ", ".join(f"{k}={v}" for k, v in layer["setting"].items()) or "—"
            shapes = f"{_shape(layer['in_shape'])} → {_shape(layer['out_shape'])}"
            err = "—" if layer["rel_weight_error"] is None else f"{layer['rel_weight_error']:.3f}"
            out.append(
                f"| {layer['name']} | {layer['form'] or '—'} | {setting} | {shapes} | "
                f"{layer['params_before']:,} → {layer['params_after']:,} | "
                f"{layer['macs_before']:,} → {layer['macs_after']:,} | {err} | {layer['skipped_reason'] or ''} |"
            )
        t = self.totals
        out.append(
            f"| **total** | | | | {t['params_before']:,} → {t['params_after']:,} | "
            f"{t['macs_before']:,} → {t['macs_after']:,} | | |"
        )
        out += ["", "## Verification", ""]
        out += _dict_table(self.parity)
        for provider, per_batch in self.speed.items():
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
        out += deploy_markdown(self.deploy)
        if self.planning:
            shown = {k: v for k, v in self.planning.items() if k != "layer_timings"}
            out += ["", "## Planning", "", self.planning_line(), ""] + _dict_table({"planning": shown})
            out += _timings_markdown(self.planning.get("layer_timings") or [])
        if self.finetune:
            out += ["", "## Fine-tuning", ""] + _dict_table({"finetune": self.finetune})
            out += _finetune_markdown(self.finetune)
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.timings_s:
            out += ["", "## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in self.timings_s.items()]
        out += _run_markdown(self.run, self.options)
        return "\n".join(out) + "\n"


AGREEMENT_FLOOR = 0.9  # below this top-1 agreement or cosine, the summary warns


def agrees(closeness: dict[str, Any]) -> bool:
    """Whether compressed and original still agree: cosine and top-1 agreement (when there is one) ≥ 0.9."""
    top1 = closeness.get("top1_agreement")
    return closeness["cosine"] >= AGREEMENT_FLOOR and (top1 is None or top1 >= AGREEMENT_FLOOR)


def brief_setting(setting: dict[str, Any], longest: int = 8) -> dict[str, Any]:
    """The setting as the report shows it: per-channel lists (octave losses, channel scales) summarised as
    "N values, min..max"; ``plan.json`` keeps them whole."""
    out = {}
    for key, value in setting.items():
        if isinstance(value, (list, tuple)) and len(value) > longest:
            numbers = [v for v in value if isinstance(v, (int, float))]
            span = f", {min(numbers):.3g}..{max(numbers):.3g}" if numbers else ""
            out[key] = f"{len(value)} values{span}"
        else:
            out[key] = value
    return out


def _ratio(after: int, before: int) -> str:
    return f"{before:,} → {after:,} ({after / before:.1%})" if before else "n/a"


def _shape(shape: list[int]) -> str:
    return "×".join(map(str, shape)) if shape else "?"


def _dict_table(sections: dict[str, Any]) -> list[str]:
    lines = ["| check | value |", "|---|---|"]
    for section, values in sections.items():
        if not isinstance(values, dict):
            lines.append(f"| {section} | {values} |")
            continue
        for key, value in values.items():
            if isinstance(value, dict):
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
    """Accuracy per stage and stage 1's per-layer errors (issue 5); empty when fine-tuning did not record them."""
    out = []
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
