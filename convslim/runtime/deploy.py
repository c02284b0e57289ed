"""What the user compares against: the original and the compressed model, in fp32 and (for an int8 target) in
int8, each checked for accuracy and timed together, with speedups against the fp32 original and the int8 one.

Names: ``original_fp32`` (``original.onnx``, the BN-folded original), ``compressed_fp32`` (``model.onnx``), and
for int8 targets ``original_int8`` (``original.int8.onnx``) and ``compressed_int8`` (``model.int8.onnx``).

Example:
    >>> settings = DeploySettings(runtime="cpu-int8", calibration=Calibration.split(train, val=val))
    >>> models, info = deploy_models(scratch, settings)
    >>> accuracy(models, settings)["compressed_int8"]
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from convslim.core.samples import MEANINGFUL_SCORE, SESSION_BATCH
from convslim.errors import UsageError
from convslim.runtime.export import ExportSettings, export_bytes
from convslim.runtime.int8 import Calibration, Int8Settings, check_exclusions, matching
from convslim.runtime.int8_speed import NodeSpeeds
from convslim.runtime.measure import NOISY_SPREAD, NOISY_WARNING, measure_models
from convslim.runtime.sessions import run_batched
from convslim.runtime.targets import available_target
from convslim.runtime.timing import DEFAULT_TIMING, STEADY_THREADS, TimingSettings, compare

INT8_WARN_DROP = 0.01  # an int8 model losing more than 1 pt against its fp32 twin gets a warning

FILES = {
    "original_fp32": "original.onnx",
    "compressed_fp32": "model.onnx",
    "original_int8": "original.int8.onnx",
    "compressed_int8": "model.int8.onnx",
}


@dataclass(frozen=True)
class DeploySettings:
    """``runtime``: a target name (``cpu``, ``cpu-int8``, ...); ``export``: opset and static shape; ``int8``:
    quantization settings for int8 targets; ``calibration``: images to calibrate and check accuracy on.
    ``speeds``: the int8 per-conv timings this run has made (the planner's rounds and the final deployment
    time each kind of conv once); not a setting, so it does not take part in comparisons."""

    runtime: str = "cpu"
    export: ExportSettings = field(default_factory=ExportSettings)
    int8: Int8Settings | None = None
    calibration: Calibration | None = None
    timing: TimingSettings = DEFAULT_TIMING
    speeds: NodeSpeeds = field(default_factory=NodeSpeeds, compare=False, repr=False)

    def target(self):
        """The target, checked: known, available here, and given calibration images when it needs them."""
        target = available_target(self.runtime)
        if hasattr(target, "with_settings"):
            target = target.with_settings(
                self.int8 if self.int8 is not None else target.settings, self.speeds
            )
        if target.needs_calibration and self.calibration is None:
            raise UsageError(
                f"--runtime {target.name} needs calibration images: pass --data TRAIN (.npz, .pt or an image "
                "folder) or --calib-data IMAGES"
            )
        return target


def check_exclusions_early(settings: DeploySettings, onnx_files: list[Path], compressed: tuple = ()) -> None:
    """Before fine-tuning: every ``--int8-exclude`` entry names a node, op type or kind of the ONNX models in
    ``onnx_files`` (those that exist) or, when they do not settle it, of ``compressed`` = (model, example inputs)
    as exported now (fine-tuning changes weights, not nodes). Nothing to check off int8 targets or without
    entries."""
    exclude = (settings.int8 or Int8Settings()).exclude
    if not exclude or settings.target().precision != "int8":
        return
    graphs = [onnx.load(str(path)) for path in onnx_files if Path(path).is_file()]
    settled = lambda: all(any(matching((e,), g) for g in graphs) for e in exclude)  # noqa: E731
    if compressed and not settled():
        graphs.append(onnx.load_from_string(export_bytes(*compressed, settings.export)))
    if graphs:
        check_exclusions(exclude, graphs)


def deploy_models(folder: Path, settings: DeploySettings) -> tuple[dict[str, Path], dict]:
    """The fp32 pair already exported in ``folder`` plus, for an int8 target, both quantized (and checked)."""
    target = settings.target()
    models = {name: folder / FILES[name] for name in ("original_fp32", "compressed_fp32")}
    info: dict = {}
    if target.precision == "int8":
        int8 = settings.int8 or Int8Settings()
        graphs = {kind: onnx.load(str(models[f"{kind}_fp32"])) for kind in ("original", "compressed")}
        check_exclusions(int8.exclude, list(graphs.values()))
        for kind in ("original", "compressed"):
            own = replace(int8, exclude=matching(int8.exclude, graphs[kind]))  # each model its own nodes
            deployed = (
                replace(settings, int8=own)
                .target()
                .deploy(models[f"{kind}_fp32"], folder / FILES[f"{kind}_int8"], settings.calibration)
            )
            onnx.checker.check_model(onnx.load(str(deployed.path)))
            models[f"{kind}_int8"] = deployed.path
            info[kind] = deployed.info
    return models, info


def accuracy(models: dict[str, Path], settings: DeploySettings) -> dict | None:
    """Top-1 of every model on the held-out images (labels given), else top-1 agreement with the fp32 original."""
    calibration = settings.calibration
    if calibration is None or calibration.held_x is None or not len(calibration.held_x):
        return None
    target = settings.target()
    outputs = {
        name: run_batched(target.session(path), calibration.held_x, SESSION_BATCH)
        for name, path in models.items()
    }
    if any(len(out) == 0 for out in outputs.values()):
        return None  # fewer held-out images than the model's fixed batch
    if calibration.held_y is not None:
        metric, reference = "top1", calibration.held_y.numpy()
    else:
        metric, reference = "agreement with original_fp32", outputs["original_fp32"].argmax(1)
    scores = {name: float((out.argmax(1) == reference[: len(out)]).mean()) for name, out in outputs.items()}
    n = min(len(out) for out in outputs.values())
    return {"metric": metric, "data": calibration.held_source, "n": n, **scores}


def int8_warnings(scores: dict | None) -> list[str]:
    """One warning per int8 model that lost more than ``INT8_WARN_DROP`` against its fp32 twin."""
    warnings = []
    if scores and scores.get("n", MEANINGFUL_SCORE) < MEANINGFUL_SCORE:
        return (
            warnings  # a drop measured on a handful of images is noise (the terminal says they are too few)
        )
    for kind in ("original", "compressed"):
        fp32, int8 = (scores or {}).get(f"{kind}_fp32"), (scores or {}).get(f"{kind}_int8")
        if fp32 is not None and int8 is not None and fp32 - int8 > INT8_WARN_DROP:
            warnings.append(
                f"WARNING: {kind} int8 lost {100 * (fp32 - int8):.1f} pt {scores['metric']} against its fp32 twin "
                f"({fp32:.2%} → {int8:.2%}); keep more nodes in fp32 (--int8-exclude) or deploy fp32"
            )
    return warnings


def speed_table(
    models: dict[str, Path], example_inputs: tuple, batch_sizes, settings: DeploySettings, progress
):
    """Per batch size: every model's median ms, spread and runs, and speedups (with per-round spread) against the
    fp32 original and, when there is one, the int8 original."""
    timed = measure_models(models, example_inputs, batch_sizes, settings.target(), settings.timing, progress)
    table = {}
    for batch, timings in timed.items():
        entry = {"latency": {name: t.summary() for name, t in timings.items()}, "speedup": {}}
        for reference in ("original_fp32", "original_int8"):
            if reference in timings:
                entry["speedup"][f"vs_{reference}"] = {
                    name: compare(timings[reference], t) for name, t in timings.items() if name != reference
                }
        if max(t.spread for t in timings.values()) > NOISY_SPREAD:
            entry["warning"] = NOISY_WARNING
        table[batch] = entry
    return table


def one_thread_speed(models: dict[str, Path], example_inputs: tuple, batch_sizes, settings: DeploySettings):
    """Per batch size: the fp32 pair timed again with one ORT thread per session (``timing.STEADY_THREADS``), the
    speedup ``--plan-threads 1`` rounds read; beside the default threads' it tells a plan's speed from a busy
    neighbour's."""
    pair = {name: models[name] for name in ("original_fp32", "compressed_fp32")}
    timing = replace(settings.timing, threads=STEADY_THREADS)
    timed = measure_models(pair, example_inputs, batch_sizes, settings.target(), timing)
    return {batch: compare(t["original_fp32"], t["compressed_fp32"]) for batch, t in timed.items()}


def int8_original(folder: Path, settings: DeploySettings, example_inputs: tuple, batch: int) -> dict:
    """What "just quantize" gives: ``folder``'s ``original.onnx`` in int8 (the ``cpu-int8`` target, on
    ``settings.calibration``), its accuracy beside the fp32 original's, and its speedup over it at ``batch``,
    timed together. The quantized file lives in a scratch directory; only the numbers are returned.

    Example:
        >>> int8_original(Path("out/speedup-2"), DeploySettings(calibration=calib), (x,), 32)["speedup"]
    """
    int8 = replace(settings, runtime="cpu-int8")
    target = int8.target()
    with tempfile.TemporaryDirectory(prefix="convslim-int8-") as scratch:
        deployed = target.deploy(
            folder / FILES["original_fp32"], Path(scratch) / "original.int8.onnx", int8.calibration
        )
        models = {"original_fp32": folder / FILES["original_fp32"], "original_int8": deployed.path}
        scores = accuracy(models, int8) or {}
        timed = measure_models(models, example_inputs, [batch], target, settings.timing)[str(batch)]
        ratio = compare(timed["original_fp32"], timed["original_int8"])
    return {
        "name": "original int8",
        "speedup": ratio["speedup"],
        "speedup_iqr": ratio.get("speedup_iqr"),
        "batch": batch,
        "accuracy": scores.get("original_int8"),
        "fp32_accuracy": scores.get("original_fp32"),
        "kept_fp32": deployed.info.get("excluded", []),
    }


def recommendation(speed: dict, scores: dict | None, quantized: int | None = None) -> dict | None:
    """Which compressed file to ship for an int8 target, and why: ``model.int8.onnx`` unless it quantizes no
    node (``quantized`` 0: every node measured faster in fp32), lost more than ``INT8_WARN_DROP`` against
    ``model.onnx`` or measured slower than it at every timed batch size (on CPUs without VNNI, int8 depthwise
    and narrow pointwise convs often are). None without an int8 twin.

    Example:
        >>> recommendation(report.deploy["speed"], report.deploy["accuracy"])["file"]
        'model.onnx'
    """
    timed = {b: e["speedup"]["vs_original_fp32"] for b, e in speed.items()}
    if not timed or any("compressed_int8" not in v for v in timed.values()):
        return None
    fp32, int8 = FILES["compressed_fp32"], FILES["compressed_int8"]
    pairs = ", ".join(
        f"batch {b}: {v['compressed_int8']['speedup']:.2f}x int8 vs {v['compressed_fp32']['speedup']:.2f}x fp32"
        for b, v in timed.items()
    )
    if quantized == 0:
        return {
            "file": fp32,
            "why": f"int8 kept every node in fp32 (the whole model ran faster so): {int8} is {fp32}",
        }
    drop = (scores or {}).get("compressed_fp32", 0.0) - (scores or {}).get("compressed_int8", 0.0)
    if scores and drop > INT8_WARN_DROP:
        return {"file": fp32, "why": f"{int8} lost {100 * drop:.1f} pt {scores['metric']} against {fp32}"}
    if all(v["compressed_int8"]["speedup"] < v["compressed_fp32"]["speedup"] for v in timed.values()):
        return {
            "file": fp32,
            "why": f"int8 measured slower than fp32 for this model on this CPU ({pairs} over the fp32 original)",
        }
    return {"file": int8, "why": f"measured over the fp32 original: {pairs}"}
