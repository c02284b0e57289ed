"""A trade-off sweep: ``compress(..., to="auto", target_speedup=t)`` once per target, each point written to
``out_dir/speedup-<t>/`` exactly as ``convslim compress --to auto --target-speedup t`` writes it, then one table
of what each point measured (``sweep.json``, ``sweep.md``) and a plot of accuracy against measured speedup
(``sweep.png``, with ``matplotlib``: ``pip install convslim[plot]``).

A point that fails with a convslim error (``ConvslimError``: a budget no layer can meet, a model that does not
export, ...) is recorded with its reason and the sweep goes on; any other exception is a bug and propagates. The
summary is rewritten (atomically) after every point, so after Ctrl-C the points finished so far are on disk.
A fine-tune stopped by Ctrl-C still writes its point (marked interrupted), and the sweep stops there.

Speedups are the ones each point's report measures for its plan (``Report.speedups``): the fp32 pair on CPU,
the int8 pair under ``cpu-int8``. Accuracy is ``report.deploy["accuracy"]`` of the deployed compressed model:
top-1 on the validation (or held-back) images, or top-1 agreement with the original without labels.

Example:
    >>> settings = SweepSettings((1.5, 2, 3), "sweep", compress_options={"finetune": hook, "calibration": x})
    >>> result = sweep(model, torch.randn(1, 3, 32, 32), settings)
    >>> [(p.target, p.status, p.measured_speedup) for p in result.points]
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from convslim.api import compress, prepare
from convslim.core.outputs import atomic_write_bytes, atomic_write_text, check_output_dir
from convslim.core.signals import signal_name
from convslim.errors import ConvslimError, UsageError
from convslim.options import CompressOptions
from convslim.planner.uniform import check_exclude
from convslim.report.report import Report
from convslim.runtime.deploy import int8_original

FIXED = {
    "to",
    "plan",
    "budget",
    "target_speedup",
    "target_macs",
    "max_error",
    "output",
    "out_dir",
    "overwrite",
}
PLOT_HINT = "pip install convslim[plot] for sweep.png"


@dataclass(frozen=True)
class SweepSettings:
    """``targets``: speedups to plan for; ``out_dir``: the sweep's folder (empty unless ``overwrite``, which
    replaces each point's folder when that point is ready); ``compress_options``: keywords for every
    ``compress`` call (``finetune``, ``calibration``, ``deploy``, ``checks``, ``exclude``, ``progress``, ...);
    the sweep sets ``to``, the budget and the output itself. ``quiet``: no per-point lines on stderr."""

    targets: Sequence[float]
    out_dir: str | Path
    overwrite: bool = False
    plan_batch: int = 32
    compress_options: Mapping[str, Any] = field(default_factory=dict)
    quiet: bool = False
    int8_reference: bool = True  # under fp32 on CPU, also quantize and time the original ("just quantize")


@dataclass
class SweepPoint:
    """One target's outcome. ``status``: ok, verification failed, interrupted (fine-tune stopped by a signal;
    the folder holds its best weights) or failed (``reason`` says why; no folder)."""

    target: float
    status: str
    minutes: float
    folder: str | None = None
    reason: str | None = None
    measured_speedup: float | None = None  # at the planning batch
    speedups: dict[str, float] = field(default_factory=dict)  # per timed batch size
    accuracy: float | None = None
    metric: str | None = None
    macs_fraction: float | None = None
    reached: bool | None = None


@dataclass
class SweepResult:
    points: list[SweepPoint]
    references: list[dict] = field(default_factory=list)  # the original (and its other precision) to compare
    stopped_by: str | None = None  # a signal that stopped a point's fine-tune, and with it the sweep
    files: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> list[SweepPoint]:
        return [p for p in self.points if p.status == "ok"]


def sweep(model: nn.Module, example_inputs, settings: SweepSettings) -> SweepResult:
    """Compress ``model`` once per target speedup into ``settings.out_dir`` and summarise the trade-off.

    Example:
        >>> result = sweep(model, x, SweepSettings((2, 3), "out", compress_options={"finetune": hook}))
        >>> result.files["sweep.md"]
    """
    targets = check_targets(settings.targets)
    fixed = sorted(FIXED & set(settings.compress_options))
    if fixed:
        raise UsageError(f"compress_options: {', '.join(fixed)} are set by the sweep itself; drop them")
    check_output_dir(settings.out_dir, overwrite=settings.overwrite)
    _check_points(model, example_inputs, targets, settings)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult([])
    for i, target in enumerate(targets, 1):
        try:
            point, report = _run_point(model, example_inputs, target, settings)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (``core.signals``)
            result.stopped_by = signal_name(exc)
            write_summary(out, result, interrupted_at=target)
            raise
        result.points.append(point)
        if report is not None and not result.references:
            result.references = references(report) + int8_reference(point, example_inputs, settings)
        if point.status == "interrupted":
            result.stopped_by = (report.finetune or {}).get("stopped_by") or "SIGINT"
        write_summary(out, result)
        if not settings.quiet:
            print(f"convslim sweep: [{i}/{len(targets)}] {describe(point)}", file=sys.stderr, flush=True)
        if result.stopped_by:
            break
    return result


def _run_point(model, example_inputs, target: float, settings: SweepSettings):
    """One ``compress`` call: (its point, its report), or (a failed point, None) on a convslim error."""
    folder = Path(settings.out_dir) / f"speedup-{target:g}"
    start = time.perf_counter()
    try:
        result = compress(
            model,
            example_inputs,
            to="auto",
            target_speedup=target,
            plan_batch=settings.plan_batch,
            out_dir=folder,
            overwrite=settings.overwrite,
            **settings.compress_options,
        )
    except ConvslimError as exc:
        minutes = (time.perf_counter() - start) / 60
        return SweepPoint(target, "failed", minutes, reason=str(exc)), None
    return point_from_report(target, result.report, (time.perf_counter() - start) / 60, folder), result.report


def point_from_report(target: float, report: Report, minutes: float, folder: Path) -> SweepPoint:
    """What the sweep keeps of one point's report."""
    finetune = report.finetune or {}
    status = "ok" if report.passed is not False else "verification failed"
    status = "interrupted" if finetune.get("interrupted") else status
    accuracy = (report.deploy or {}).get("accuracy") or {}
    deployed = "compressed_int8" if (report.deploy or {}).get("precision") == "int8" else "compressed_fp32"
    totals = report.totals
    return SweepPoint(
        target,
        status,
        minutes,
        folder=str(folder),
        measured_speedup=report.measured_speedup(),
        speedups=report.speedups(),
        accuracy=accuracy.get(deployed),
        metric=accuracy.get("metric"),
        macs_fraction=totals["macs_after"] / totals["macs_before"] if totals["macs_before"] else None,
        reached=(report.planning or {}).get("reached"),
    )


def references(report: Report) -> list[dict]:
    """The fp32 original at speedup 1 (every point's speedup is against it); under int8 also the int8 original
    at its measured speedup (both measured in every point's report; under fp32 no int8 original is made)."""
    deploy = report.deploy or {}
    accuracy = deploy.get("accuracy") or {}
    refs = [{"name": "original", "speedup": 1.0, "accuracy": accuracy.get("original_fp32")}]
    if deploy.get("precision") != "int8":
        return refs
    entry = (deploy.get("speed") or {}).get(str((report.planning or {}).get("batch"))) or {}
    int8 = entry.get("speedup", {}).get("vs_original_fp32", {}).get("original_int8")
    if int8:
        refs.append(
            {"name": "original int8", "speedup": int8["speedup"], "accuracy": accuracy.get("original_int8")}
        )
    return refs


def int8_reference(point: SweepPoint, example_inputs, settings: SweepSettings) -> list[dict]:
    """Under the fp32 ``cpu`` runtime, the original quantized by the ``cpu-int8`` target, scored and timed
    against the fp32 original at the planning batch (``runtime.deploy.int8_original``): the point a user gets
    from "just quantize". Needs calibration images (``deploy.calibration``); none without them."""
    deploy = settings.compress_options.get("deploy")
    usable = deploy is not None and deploy.runtime == "cpu" and deploy.calibration is not None
    exported = point.folder is not None and (Path(point.folder) / "original.onnx").is_file()
    if not (settings.int8_reference and usable and exported and point.measured_speedup):
        return []
    return [int8_original(Path(point.folder), deploy, tuple(example_inputs), settings.plan_batch)]


def check_targets(targets: Sequence[float]) -> tuple[float, ...]:
    """The targets as floats: at least one, each a positive number, no two alike (they would share a folder)."""
    try:
        values = tuple(float(t) for t in targets)
    except (TypeError, ValueError):
        raise UsageError(f"targets {targets!r}: expected numbers like 1.5,2,2.5,3") from None
    if not values or len({f"{t:g}" for t in values}) != len(values):
        raise UsageError(f"targets {targets!r}: expected distinct speedups like 1.5,2,2.5,3")
    for value in values:  # every target checked before any point runs (a bad one would fail after the others)
        if not (math.isfinite(value) and value > 1):
            raise UsageError(f"targets {targets!r}: {value:g} is not a speedup above 1; e.g. 1.5,2,2.5,3")
    return values


def _check_points(
    model: nn.Module, example_inputs, targets: Sequence[float], settings: SweepSettings
) -> None:
    """Every point's options as ``compress`` checks them, and the layers ``exclude`` names, before any work."""
    options = dict(settings.compress_options, plan_batch=settings.plan_batch)
    for target in targets:
        opts = CompressOptions.of({**options, "target_speedup": target})
        opts.check("auto")
    check_exclude(opts.exclude, prepare(model, example_inputs, opts.calibration))


def describe(point: SweepPoint) -> str:
    """One line per point, as the progress and the table's status say it."""
    head = f"target {point.target:g}x: {point.status}"
    if point.reason:
        return f"{head}: {point.reason}"
    measured = "not timed" if point.measured_speedup is None else f"{point.measured_speedup:.2f}x"
    score = "" if point.accuracy is None else f", {point.metric} {point.accuracy:.2%}"
    reached = "" if point.reached is not False else " (target not reached)"
    return f"{head}, measured {measured}{reached}{score}, {point.minutes:.1f} min → {point.folder}"


def write_summary(out: Path, result: SweepResult, interrupted_at: float | None = None) -> None:
    """sweep.json, sweep.png (with matplotlib) and sweep.md, each replaced atomically."""
    files = {"sweep.json": out / "sweep.json", "sweep.md": out / "sweep.md"}
    if plot(result, out / "sweep.png"):
        files["sweep.png"] = out / "sweep.png"
    result.files = {name: str(path) for name, path in files.items()}
    summary = {
        "points": [asdict(p) for p in result.points],
        "references": result.references,
        "stopped_by": result.stopped_by,
        "interrupted_at_target": interrupted_at,
        "files": result.files,
    }
    atomic_write_text(files["sweep.json"], json.dumps(summary, indent=2))
    atomic_write_text(files["sweep.md"], markdown(result, interrupted_at))


def markdown(result: SweepResult, interrupted_at: float | None = None) -> str:
    """The table: target, measured speedup per batch size, accuracy, MACs, minutes, status."""
    batches = sorted({b for p in result.points for b in p.speedups}, key=int)
    metric = next((p.metric for p in result.points if p.metric), None) or "accuracy"
    head = ["target", *(f"speedup @ batch {b}" for b in batches), metric, "MACs", "minutes", "status"]
    lines = ["# convslim sweep", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in result.points:
        cells = [f"{p.target:g}x", *(_cell(p.speedups.get(b), "{:.2f}x") for b in batches)]
        cells += [_cell(p.accuracy, "{:.2%}"), _cell(p.macs_fraction, "{:.1%}"), f"{p.minutes:.1f}"]
        status = f"{p.status}: {p.reason}" if p.reason else p.status
        cells.append(status + (" (target not reached)" if p.reached is False else ""))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for ref in result.references:
        lines.append(
            f"\n{ref['name']}: {_cell(ref['accuracy'], '{:.2%}')} {metric} at {ref['speedup']:.2f}x."
        )
    if interrupted_at is not None:
        lines.append(f"\nInterrupted during target {interrupted_at:g}x; the points above are complete.")
    lines.append(
        "\n![accuracy vs measured speedup](sweep.png)" if "sweep.png" in result.files else f"\n{PLOT_HINT}"
    )
    return "\n".join(lines) + "\n"


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def plot(result: SweepResult, path: Path) -> bool:
    """Accuracy against measured speedup, the references as stars; False (nothing written) without matplotlib."""
    try:
        import matplotlib  # noqa: F401  (a missing matplotlib fails here, not halfway through)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        return False
    figure = Figure(figsize=(6, 4), layout="tight")
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    axes = figure.add_subplot()
    done = sorted(
        (p.measured_speedup, p.accuracy, p.target)
        for p in result.points
        if p.status == "ok" and p.measured_speedup is not None and p.accuracy is not None
    )
    if done:
        axes.plot([d[0] for d in done], [d[1] for d in done], "o-", label="compressed")
        for x, y, target in done:
            axes.annotate(
                f"target {target:g}x", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    for ref in (r for r in result.references if r["accuracy"] is not None):
        axes.plot([ref["speedup"]], [ref["accuracy"]], "*", markersize=12, label=ref["name"])
    metric = next((p.metric for p in result.points if p.metric), None) or "accuracy"
    axes.set(xlabel="measured speedup (planning batch)", ylabel=metric, title="convslim sweep")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.margins(0.15)  # room for the labels
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return True
