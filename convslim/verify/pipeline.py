"""Export and verification steps of ``compress``, kept apart from the API surface.

Order: export the BN-folded original and the compressed model (same exporter, same options: ``runtime.export``)
into a scratch folder, check ONNX vs PyTorch parity of both, compare compressed vs original outputs, deploy both
for the target (int8: quantize), check accuracy and time them together (``runtime.deploy``), then write the
outputs through a staging folder so ``out_dir`` appears whole or not at all.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from convslim.convert import get_form
from convslim.core import Plan, Prepared
from convslim.core.outputs import staged_output_dir
from convslim.report.report import Report
from convslim.runtime.deploy import (
    FILES,
    DeploySettings,
    accuracy,
    deploy_models,
    int8_warnings,
    legacy_pair,
    recommendation,
    speed_table,
)
from convslim.runtime.export import export_model, file_sha256, fixed_input_shape, op_counts
from convslim.runtime.measure import measure_speed
from convslim.runtime.targets import get_target
from convslim.verify.parity import compare_models, judge_with_floor, onnx_parity

PARITY_BATCH_SIZES = (1, 4)


def weight_errors(prepared: Prepared, plan: Plan) -> dict[str, float | None]:
    modules = dict(prepared.traced.module.named_modules())
    return {d.name: get_form(d.form).weight_error(modules[d.name], d.setting) for d in plan.rewritten}


def parity_batches(example_inputs: tuple, calibration: torch.Tensor | None, fixed_batch: int | None = None):
    """Random inputs shaped like the example (batch 1 and 4), plus up to 64 real samples when given; a model with
    a fixed batch gets batches of exactly that size."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for batch in (fixed_batch,) if fixed_batch else PARITY_BATCH_SIZES:
        batches.append(
            tuple(
                torch.randn((batch, *t.shape[1:]), generator=generator, dtype=t.dtype)
                if t.is_floating_point()
                else t
                for t in example_inputs
            )
        )
    if calibration is not None and (fixed_batch is None or len(calibration) >= fixed_batch):
        batches.append((calibration[: fixed_batch or 64],))
    return batches


@dataclass
class VerifySettings:
    """How ``export_and_verify`` checks and where it writes (see ``convslim.api.compress``)."""

    out_dir: str | Path | None
    overwrite: bool
    batch_sizes: Sequence[int]
    tolerance: float
    calibration: torch.Tensor | None
    progress: bool
    deploy: DeploySettings = field(default_factory=DeploySettings)


def export_and_verify(
    prepared: Prepared,
    compressed: nn.Module,
    plan: Plan,
    report: Report,
    scratch: Path,
    settings: VerifySettings,
) -> None:
    t0 = time.perf_counter()
    program, original_program, fixed_batch = _export_pair(
        prepared, compressed, report, scratch, settings.deploy
    )
    report.timings_s["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batches = parity_batches(prepared.example_inputs, settings.calibration, fixed_batch)
    tol = settings.tolerance
    parity = onnx_parity(scratch / "model.onnx", compressed, batches, rtol=tol)
    floor = onnx_parity(scratch / "original.onnx", prepared.traced.module, batches, rtol=tol)
    report.parity["original_onnx_vs_torch"] = floor
    # judged against the original's own ONNX error: runtime noise the original shows is not the rewrite's fault
    report.parity["onnx_vs_torch"] = judge_with_floor(parity, floor)
    explain_parity(report, (original_program, program), scratch, batches[0], tol)
    report.parity["compressed_vs_original"] = _closeness(prepared, compressed, batches, fixed_batch)
    report.passed = report.parity["onnx_vs_torch"]["passed"]
    models, int8_info = deploy_models(scratch, settings.deploy)
    report.deploy = _deploy_section(settings.deploy, int8_info, models)
    report.deploy["accuracy"] = accuracy(models, settings.deploy)
    report.notes.extend(int8_warnings(report.deploy["accuracy"]))
    batch_sizes = _timed_batches(settings.batch_sizes, fixed_batch, report)
    if batch_sizes:
        _measure(models, prepared.example_inputs, batch_sizes, report, settings)
    else:
        report.speed["ort_cpu"] = {"skipped": "speed not measured (--no-speed / measure_speed=False)"}
    report.timings_s["verify"] = time.perf_counter() - t0
    if settings.out_dir is not None:
        _write_outputs(report, models, program, compressed, plan, settings)


def _closeness(prepared: Prepared, compressed: nn.Module, batches: list, fixed_batch: int | None) -> dict:
    """Compressed vs original on the real samples when the user gave any (on random noise, agreement says little
    about the task), else on the random batches; ``inputs`` says which."""
    random_count = 1 if fixed_batch else len(PARITY_BATCH_SIZES)
    real = batches[random_count:]
    closeness = compare_models(prepared.original, compressed, real or batches)
    n = closeness["n_samples"]
    closeness["inputs"] = (
        f"{n} samples of the calibration data (--data)"
        if real
        else f"{n} random-noise samples (no data given)"
    )
    return closeness


def _export_pair(prepared, compressed, report, scratch, deploy: DeploySettings):
    """model.onnx and original.onnx, same exporter and settings; returns the compressed and original programs
    and the fixed batch (None when the batch axis is dynamic)."""
    example = prepared.example_inputs
    exported = export_model(compressed, example, scratch / FILES["compressed_fp32"], deploy.export)
    original = export_model(prepared.traced.module, example, scratch / FILES["original_fp32"], deploy.export)
    report.notes.extend(n for n in (exported.note(), original.note()) if n)
    onnx_model = onnx.load(str(exported.path))
    ops = op_counts(onnx_model)
    report.parity["onnx_ops"] = ops
    if ops.get("BatchNormalization"):
        report.notes.append(
            f"{ops['BatchNormalization']} BatchNormalization node(s) remain in the ONNX graph "
            "(BatchNorm that does not follow a conv, or tracing fell back)"
        )
    dynamic = exported.dynamic_batch and original.dynamic_batch
    return exported.program, original.program, None if dynamic else int(fixed_input_shape(onnx_model)[0])


def _deploy_section(deploy: DeploySettings, int8_info: dict, models: dict) -> dict:
    target = deploy.target()
    section = {
        "runtime": target.name,
        "precision": target.precision,
        "export": {"opset": deploy.export.opset, "static_shape": deploy.export.static_shape},
        "onnx_sha256": {FILES[name]: file_sha256(path) for name, path in models.items()},
    }
    if int8_info:
        section["int8"] = int8_info
    return section


def _timed_batches(batch_sizes: Sequence[int], fixed_batch: int | None, report: Report) -> tuple[int, ...]:
    if not batch_sizes or fixed_batch is None or tuple(batch_sizes) == (fixed_batch,):
        return tuple(batch_sizes)
    report.notes.append(
        f"the ONNX models have a fixed batch of {fixed_batch}: timed at batch {fixed_batch} only"
    )
    return (fixed_batch,)


def _measure(models: dict, example, batch_sizes, report: Report, settings: VerifySettings) -> None:
    """All deployed models timed together on the target's CPU side; the fp32 pair also as ``ort_cpu``."""
    deploy = settings.deploy
    table = speed_table(models, example, batch_sizes, deploy, settings.progress)
    report.deploy["speed"] = table
    quantized = (report.deploy.get("int8") or {}).get("compressed", {}).get("quantized_nodes")
    advice = recommendation(table, report.deploy.get("accuracy"), quantized)
    if advice:
        report.deploy["recommended"] = advice
    report.speed["ort_cpu"] = {b: legacy_pair(entry) for b, entry in table.items()}
    for name in ("cuda", "tensorrt") if deploy.target().name in ("cuda", "tensorrt") else ("cuda",):
        reason = get_target(name).unavailable()
        if reason:
            report.speed[f"ort_{name}"] = {"skipped": reason}
            continue
        original, compressed = models["original_fp32"], models["compressed_fp32"]
        report.speed[f"ort_{name}"] = measure_speed(
            original, compressed, example, batch_sizes, name, deploy.timing
        )


def _write_outputs(report: Report, models: dict, program, compressed, plan: Plan, settings: VerifySettings):
    out_dir = Path(settings.out_dir)
    with staged_output_dir(out_dir, overwrite=settings.overwrite) as staging:
        for path in models.values():
            shutil.copyfile(path, staging / path.name)
        torch.export.save(program, str(staging / "compressed.pt2"))
        torch.save(compressed.state_dict(), staging / "compressed_state_dict.pt")
        (staging / "plan.json").write_text(plan.to_json())
        names = [p.name for p in models.values()]
        names += ["compressed.pt2", "compressed_state_dict.pt", "plan.json", "report.json", "report.md"]
        report.outputs = {name: str(out_dir / name) for name in names}
        write_report(report, staging)


def explain_parity(report: Report, programs: tuple, scratch: Path, inputs: tuple, tolerance: float) -> None:
    """When the original's own ONNX disagrees with PyTorch beyond ``tolerance``, or the compressed model fails,
    name the first intermediate value (and op) where ORT departs from PyTorch, in a report note."""
    from convslim.verify.diagnose import divergence_note, first_divergence

    checks = (
        ("original", report.parity["original_onnx_vs_torch"], programs[0], "original.onnx"),
        ("compressed", report.parity["onnx_vs_torch"], programs[1], "model.onnx"),
    )
    for which, parity, program, name in checks:
        if parity["passed"]:
            continue
        found = first_divergence(program, scratch / name, inputs, tolerance)
        report.parity[f"{which}_divergence"] = found
        if which == "original":
            report.notes.append(divergence_note(which, parity, found))
        elif found is not None:
            report.notes.append(
                f"compressed model: the first intermediate value where ONNX Runtime departs from PyTorch is "
                f"{found['value']} from ONNX op {found['onnx_op']} (max abs err {found['max_abs_err']:.3g})"
            )


def write_report(report: Report, folder: Path) -> None:
    import json

    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (folder / "report.md").write_text(report.to_markdown())
