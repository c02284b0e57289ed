"""The compression report: the sections each stage returned (``sections``), assembled; written as one dict
(``report.json``, ``SCHEMA_VERSION``), the same as Markdown tables (``report.md``) and a short terminal summary.
Every number in it was computed or measured in this run.

Example:
    >>> report = Report(PlanSection.of(plan), RewriteSection.of(plan, "fx", {}))
    >>> print(report.summary())
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from convslim.core import Plan, cache_summary
from convslim.report.deploy import deploy_lines, fp32_pair
from convslim.report.sections import (
    SCHEMA_VERSION,
    DeploySection,
    ExportSection,
    FinetuneSection,
    PlanSection,
    RewriteSection,
    RunSection,
    VerifySection,
)


@dataclass(frozen=True)
class Report:
    """Every stage's section; the ones a run did not reach are None. Read-only: a stage returns its section and
    ``Report`` only assembles (the flat names below, ``report.parity``, ``report.notes`` ..., read the sections)."""

    plan: PlanSection
    rewrite: RewriteSection
    run: RunSection = field(default_factory=RunSection)
    finetune: FinetuneSection | None = None
    export: ExportSection | None = None
    verify: VerifySection | None = None
    deploy: DeploySection | None = None
    outputs: Any = field(default_factory=lambda: MappingProxyType({}))  # file name → path, once written

    @classmethod
    def from_plan(cls, plan: Plan, trace_mode: str, weight_errors: dict[str, float | None]) -> Report:
        return cls(PlanSection.of(plan), RewriteSection.of(plan, trace_mode, weight_errors))

    form = property(lambda self: self.plan.form)
    options = property(lambda self: self.plan.options)
    planning = property(lambda self: self.plan.planning)
    trace_mode = property(lambda self: self.rewrite.trace_mode)
    layers = property(lambda self: self.rewrite.layers)
    totals = property(lambda self: self.rewrite.totals)
    batchnorm_folded = property(lambda self: self.rewrite.batchnorm_folded)

    @property
    def passed(self) -> bool | None:
        return None if self.verify is None else self.verify.passed

    @property
    def notes(self) -> list[str]:
        stages = (self.rewrite, self.export, self.verify, self.deploy)
        return [note for stage in stages if stage is not None for note in stage.notes]

    @property
    def parity(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.export is None else {"onnx_ops": self.export.onnx_ops}
        return out if self.verify is None else {**out, **self.verify.parity()}

    @property
    def speed(self) -> dict[str, Any]:
        """The fp32 pair on CUDA / TensorRT (or why not); on the CPU every model is in ``deploy["speed"]``."""
        return {} if self.deploy is None else dict(self.deploy.other_providers)

    @property
    def timings_s(self) -> dict[str, float]:
        stages = {"plan": self.plan, "rewrite": self.rewrite, "finetune": self.finetune}
        stages.update(export=self.export, verify=self.verify)
        return {k: s.seconds for k, s in stages.items() if s is not None and s.seconds is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "form": self.form,
            "options": self.options,
            "trace_mode": self.trace_mode,
            "layers": self.layers,
            "totals": self.totals,
            "notes": self.notes,
            "batchnorm_folded": self.batchnorm_folded,
            "parity": self.parity,
            "speed": self.speed,
            "finetune": None if self.finetune is None else self.finetune.to_dict(),
            "timings_s": self.timings_s,
            "outputs": self.outputs,
            "passed": self.passed,
            "planning": self.planning,
            "deploy": None if self.deploy is None else self.deploy.to_dict(),
            "run": self.run.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_plain)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The report ``to_dict`` wrote (schema 1 or 2), rebuilt section by section."""
        return from_dict(data)

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
            failed = "" if c.get("finite", True) else " FAILED: NaN or infinite outputs"
            lines.append(
                f"  compressed vs original{on}: rel L2 {c['rel_l2']:.3f}, cosine {c['cosine']:.4f}{agree}{failed}"
            )
            if not agrees(c):
                lines.append(
                    "  WARNING: the compressed model no longer agrees with the original; fine-tune it with --data "
                    "(or choose a milder setting, e.g. a higher --rank) before using it"
                )
        for provider, per_batch in self.latency_tables().items():
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
        lines.extend(self.planning_lines())
        if self.finetune:
            lines.append(
                "  fine-tuning: " + ", ".join(f"{k} {v}" for k, v in self.finetune.get("summary", {}).items())
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def latency_tables(self) -> dict[str, Any]:
        """Per provider, the compressed-vs-original fp32 pair per batch size (or why it was not timed): on the CPU
        read from ``deploy["speed"]`` (every model timed together), on CUDA / TensorRT from ``speed``."""
        if self.deploy is None:
            return {}
        cpu = {}
        if self.deploy.speed_not_measured:
            cpu = {"ort_cpu": {"skipped": self.deploy.speed_not_measured}}
        elif self.deploy.speed:
            cpu = {"ort_cpu": {b: fp32_pair(entry) for b, entry in self.deploy.speed.items()}}
        return {**cpu, **self.speed}

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
        entries = self.latency_tables().get(provider, {}).items()
        return {b: e["speedup"] for b, e in entries if isinstance(e, dict) and "speedup" in e}

    def planning_lines(self) -> list[str]:
        """The plan's line, its verdict, and a warning for each other timed batch that misses a target speedup
        by more than ``BATCH_SHORTFALL`` (the plan was measured at one batch; the user may ship another)."""
        if not self.planning:
            return []
        lines = ["  " + self.planning_line()]
        if self.planning.get("verdict"):
            lines.append(f"  {self.planning['verdict']}")
        target, planned = (
            (self.planning.get("budget") or {}).get("target_speedup"),
            self.planning.get("batch"),
        )
        for batch, speedup in self.speedups().items() if target else ():
            if batch != str(planned) and speedup < (1 - BATCH_SHORTFALL) * target:
                lines.append(
                    f"  WARNING: at batch {batch} the model measured {speedup:.2f}x, more than "
                    f"{BATCH_SHORTFALL:.0%} short of the {target:g}x target, which was planned at batch {planned}; "
                    f"if you deploy at batch {batch}, plan there: --plan-batch {batch}"
                )
        return lines

    def planning_line(self) -> str:
        p = self.planning
        budget = ", ".join(f"{k} {v}" for k, v in p.get("budget", {}).items())
        measured = self.measured_speedup()
        shown = "not measured" if measured is None else f"{measured:.2f}x"
        reached = "" if p.get("reached", True) else " (budget NOT reachable with these forms)"
        return (
            f"plan ({budget}{reached}): predicted {p['predicted_speedup']:.2f}x at batch {p['batch']}"
            f"{_threads_text(p)}, measured {shown}; predicted output error {p['predicted_error']:.3f}; planning "
            f"{p['planning_s']:.1f} s ({cache_summary(p)})"
        )

    def to_markdown(self) -> str:
        from convslim.report.markdown import report_markdown

        return report_markdown(self)


AGREEMENT_FLOOR = 0.9  # below this top-1 agreement or cosine, the summary warns
BATCH_SHORTFALL = 0.1  # another timed batch this far below the target speedup gets a warning


def agrees(closeness: dict[str, Any]) -> bool:
    """Whether compressed and original still agree: finite outputs, cosine and top-1 agreement (when there is
    one) ≥ 0.9. NaN never agrees."""
    top1 = closeness.get("top1_agreement")
    cosine = closeness["cosine"]
    finite = closeness.get("finite", True) and math.isfinite(cosine) and math.isfinite(closeness["rel_l2"])
    return finite and cosine >= AGREEMENT_FLOOR and (top1 is None or top1 >= AGREEMENT_FLOOR)


def _ratio(after: int, before: int) -> str:
    return f"{before:,} → {after:,} ({after / before:.1%})" if before else "n/a"


def from_dict(data: dict[str, Any]) -> Report:
    """A ``Report`` from its ``to_dict`` (schema 1, before sections, too: its ``speed.ort_cpu`` is dropped)."""
    timings = data.get("timings_s") or {}
    plan = PlanSection(data["form"], data.get("options") or {}, data.get("planning"))
    layers = tuple(data.get("layers") or ())
    notes = tuple(data.get("notes") or ())  # one list in the file: kept with the rewrite
    rewrite = RewriteSection(
        data["trace_mode"],
        layers,
        data["totals"],
        data.get("batchnorm_folded", 0),
        notes,
        timings.get("rewrite"),
    )
    finetune = data.get("finetune")
    finetune = None if finetune is None else FinetuneSection(finetune, timings.get("finetune"))
    parity = dict(data.get("parity") or {})
    export = None
    if "onnx_ops" in parity:
        export = ExportSection(parity.pop("onnx_ops"), seconds=timings.get("export"))
    verify = None
    if "onnx_vs_torch" in parity:
        divergence = {k[: -len("_divergence")]: v for k, v in parity.items() if k.endswith("_divergence")}
        verify = VerifySection(
            parity["onnx_vs_torch"],
            parity["original_onnx_vs_torch"],
            parity["compressed_vs_original"],
            divergence,
            seconds=timings.get("verify"),
        )
    others = {k: v for k, v in (data.get("speed") or {}).items() if k != "ort_cpu"}
    deploy = None if data.get("deploy") is None else DeploySection.from_dict(data["deploy"], others)
    sections = {"finetune": finetune, "export": export, "verify": verify, "deploy": deploy}
    return Report(
        plan, rewrite, RunSection(data.get("run") or {}), **sections, outputs=data.get("outputs") or {}
    )


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: read-only mappings as dicts, anything else as its text."""
    return dict(value) if isinstance(value, MappingProxyType) else str(value)


def _threads_text(planning: dict) -> str:
    """How the closed loop's rounds were threaded, for the plan's line ("" for plans without rounds)."""
    if "round_threads" not in planning or not planning.get("rounds"):
        return ""
    threads = planning["round_threads"]
    return " (ORT default threads)" if threads is None else f" ({threads} ORT thread{'s' * (threads > 1)})"
