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
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import torch
from torch import nn

from convslim.convert import get_form
from convslim.core import Plan, Prepared
from convslim.core.outputs import staged_output_dir
from convslim.core.samples import ACTIVATION_SAMPLES
from convslim.core.seeded import generator, inputs_like
from convslim.report.report import Report
from convslim.report.sections import DeploySection, ExportSection, VerifySection
from convslim.runtime.deploy import (
    FILES,
    DeploySettings,
    accuracy,
    deploy_models,
    int8_warnings,
    one_thread_speed,
    recommendation,
    speed_table,
)
from convslim.runtime.export import Exported, export_model, file_sha256, fixed_input_shape, op_counts
from convslim.runtime.measure import measure_speed
from convslim.runtime.targets import get_target
from convslim.verify.parity import DEFAULT_RTOL, compare_models, judge_with_floor, onnx_parity

PARITY_BATCH_SIZES = (1, 4)


def weight_errors(prepared: Prepared, plan: Plan) -> dict[str, float | None]:
    modules = dict(prepared.traced.module.named_modules())
    return {d.name: get_form(d.form).weight_error(modules[d.name], d.setting) for d in plan.rewritten}


def parity_batches(example_inputs: tuple, calibration: torch.Tensor | None, fixed_batch: int | None = None):
    """Random inputs shaped like the example (batch 1 and 4), plus up to ``ACTIVATION_SAMPLES`` (64) real samples when given; a model with
    a fixed batch gets batches of exactly that size."""
    gen = generator()
    batches = [
        inputs_like(example_inputs, batch, gen)
        for batch in ((fixed_batch,) if fixed_batch else PARITY_BATCH_SIZES)
    ]
    if calibration is not None and (fixed_batch is None or len(calibration) >= fixed_batch):
        batches.append((calibration[: fixed_batch or ACTIVATION_SAMPLES],))
    return batches


@dataclass(frozen=True)
class VerifySettings:
    """How ``export_and_verify`` checks (see ``convslim.api.compress``): parity tolerance, the batch sizes timed
    (none: speed not measured), real samples for the checks, the deployment."""

    batch_sizes: Sequence[int] = (1, 32)
    tolerance: float = DEFAULT_RTOL
    calibration: torch.Tensor | None = None
    progress: bool = False
    deploy: DeploySettings = field(default_factory=DeploySettings)
    original: Exported | None = None  # original.onnx already exported into the scratch folder (compress does)


@dataclass(frozen=True)
class Verified:
    """What ``export_and_verify`` returns: its three report sections and the files ``write_outputs`` copies."""

    export: ExportSection
    verify: VerifySection
    deploy: DeploySection
    models: dict[str, Path]
    program: torch.export.ExportedProgram


def export_and_verify(
    prepared: Prepared, compressed: nn.Module, scratch: Path, settings: VerifySettings
) -> Verified:
    """Export both models into ``scratch``, check them, deploy them for the target and time them."""
    t0 = time.perf_counter()
    export, programs = _export_pair(prepared, compressed, scratch, settings)
    export = replace(export, seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    verify = _verify(prepared, compressed, scratch, programs, export.fixed_batch, settings)
    models, int8_info = deploy_models(scratch, settings.deploy)
    deploy = _deploy(models, int8_info, prepared.example_inputs, export.fixed_batch, settings)
    verify = replace(verify, seconds=time.perf_counter() - t0)  # the deployment check and timing included
    return Verified(export, verify, deploy, models, programs[1])


def _verify(prepared, compressed, scratch: Path, programs: tuple, fixed_batch, settings) -> VerifySection:
    """Parity of both ONNX models against PyTorch (the compressed one judged against the original's own error:
    runtime noise the original shows is not the rewrite's fault), and compressed vs original."""
    batches = parity_batches(prepared.example_inputs, settings.calibration, fixed_batch)
    tol = settings.tolerance
    floor = onnx_parity(scratch / "original.onnx", prepared.traced.module, batches, rtol=tol)
    parity = judge_with_floor(onnx_parity(scratch / "model.onnx", compressed, batches, rtol=tol), floor)
    divergence, notes = explain_parity(
        {"original": floor, "compressed": parity}, programs, scratch, batches[0], tol
    )
    closeness = _closeness(prepared, compressed, batches, fixed_batch)
    return VerifySection(parity, floor, closeness, divergence, tuple(notes))


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


def _export_pair(prepared, compressed, scratch, settings: VerifySettings) -> tuple[ExportSection, tuple]:
    """model.onnx and original.onnx (unless exported already), same exporter and settings; returns the section
    and the (original, compressed) torch.export programs."""
    example, deploy = prepared.example_inputs, settings.deploy
    exported = export_model(compressed, example, scratch / FILES["compressed_fp32"], deploy.export)
    original = settings.original or export_original(prepared, scratch, deploy)
    notes = [n for n in (exported.note(), original.note()) if n]
    onnx_model = onnx.load(str(exported.path))
    ops = op_counts(onnx_model)
    if ops.get("BatchNormalization"):
        notes.append(
            f"{ops['BatchNormalization']} BatchNormalization node(s) remain in the ONNX graph "
            "(BatchNorm that does not follow a conv, or tracing fell back)"
        )
    dynamic = exported.dynamic_batch and original.dynamic_batch
    fixed_batch = None if dynamic else int(fixed_input_shape(onnx_model)[0])
    return ExportSection(ops, fixed_batch, tuple(notes)), (original.program, exported.program)


def export_original(prepared: Prepared, scratch: Path, deploy: DeploySettings) -> Exported:
    """The BN-folded original as ``original.onnx`` in ``scratch``, exported as the deployment asks: once per
    run (``compress`` does it first, which also finds a model torch.export cannot take before any work)."""
    path = scratch / FILES["original_fp32"]
    return export_model(prepared.traced.module, prepared.example_inputs, path, deploy.export)


def _deploy(models: dict, int8_info: dict, example, fixed_batch, settings: VerifySettings) -> DeploySection:
    """The deployment section: files, int8 details, accuracy, and every model timed together on the target's
    CPU side (the fp32 pair also on CUDA / TensorRT when the target is one)."""
    deploy = settings.deploy
    target = deploy.target()
    scores = accuracy(models, deploy)
    notes = int8_warnings(scores)
    section = DeploySection(
        runtime=target.name,
        precision=target.precision,
        export={"opset": deploy.export.opset, "static_shape": deploy.export.static_shape},
        onnx_sha256={FILES[name]: file_sha256(path) for name, path in models.items()},
        int8=int8_info or None,
        accuracy=scores,
    )
    batch_sizes, note = _timed_batches(settings.batch_sizes, fixed_batch)
    notes += [note] if note else []
    if not batch_sizes:
        reason = "speed not measured (--no-speed / measure_speed=False)"
        return replace(section, speed_not_measured=reason, notes=tuple(notes))
    table = speed_table(models, example, batch_sizes, deploy, settings.progress)
    steady = one_thread_speed(models, example, batch_sizes, deploy)
    quantized = (int8_info.get("compressed") or {}).get("quantized_nodes")
    others = _other_providers(models, example, batch_sizes, deploy)
    advice = recommendation(table, scores, quantized)
    return replace(
        section,
        speed=table,
        speed_one_thread=steady,
        recommended=advice,
        other_providers=others,
        notes=tuple(notes),
    )


def _timed_batches(batch_sizes: Sequence[int], fixed_batch: int | None) -> tuple[tuple[int, ...], str | None]:
    if not batch_sizes or fixed_batch is None or tuple(batch_sizes) == (fixed_batch,):
        return tuple(batch_sizes), None
    return (
        fixed_batch,
    ), f"the ONNX models have a fixed batch of {fixed_batch}: timed at batch {fixed_batch} only"


def _other_providers(models: dict, example, batch_sizes, deploy: DeploySettings) -> dict:
    """The fp32 pair on CUDA (and TensorRT, for those targets), or why it could not be timed there."""
    speed = {}
    for name in ("cuda", "tensorrt") if deploy.target().name in ("cuda", "tensorrt") else ("cuda",):
        reason = get_target(name).unavailable()
        if reason:
            speed[f"ort_{name}"] = {"skipped": reason}
            continue
        original, compressed = models["original_fp32"], models["compressed_fp32"]
        speed[f"ort_{name}"] = measure_speed(original, compressed, example, batch_sizes, name, deploy.timing)
    return speed


def output_names(verified: Verified, extra=()) -> list[str]:
    """The files ``write_outputs`` puts in the output folder (``extra``: the caller's ``Output.files``)."""
    names = [p.name for p in verified.models.values()]
    return names + [
        "compressed.pt2",
        "compressed_state_dict.pt",
        "plan.json",
        "report.json",
        "report.md",
        *extra,
    ]


def write_outputs(report: Report, verified: Verified, compressed: nn.Module, plan: Plan, output) -> None:
    """Every output file into ``output.out_dir`` through a staging folder: all of them or none."""
    with staged_output_dir(Path(output.out_dir), overwrite=output.overwrite) as staging:
        for path in verified.models.values():
            shutil.copyfile(path, staging / path.name)
        torch.export.save(verified.program, str(staging / "compressed.pt2"))
        torch.save(compressed.state_dict(), staging / "compressed_state_dict.pt")
        (staging / "plan.json").write_text(plan.to_json())
        for name, write in output.files.items():
            write(staging / name)
        write_report(report, staging)


def explain_parity(parity: dict, programs: tuple, scratch: Path, inputs: tuple, tolerance: float):
    """Where a failed parity first diverges: for each of ``parity["original"]`` / ``["compressed"]`` that failed,
    the first intermediate value (and op) where ORT departs from PyTorch; returns (divergence, notes)."""
    from convslim.verify.diagnose import divergence_note, first_divergence

    divergence, notes = {}, []
    files = {"original": (programs[0], "original.onnx"), "compressed": (programs[1], "model.onnx")}
    for which, (program, name) in files.items():
        if parity[which]["passed"]:
            continue
        found = first_divergence(program, scratch / name, inputs, tolerance)
        divergence[which] = found
        if which == "original":
            notes.append(divergence_note(which, parity[which], found))
        elif found is not None:
            notes.append(
                f"compressed model: the first intermediate value where ONNX Runtime departs from PyTorch is "
                f"{found['value']} from ONNX op {found['onnx_op']} (max abs err {found['max_abs_err']:.3g})"
            )
    return divergence, notes


def write_report(report: Report, folder: Path) -> None:
    """``report.json`` and ``report.md`` into ``folder``."""
    (folder / "report.json").write_text(report.to_json())
    (folder / "report.md").write_text(report.to_markdown())
