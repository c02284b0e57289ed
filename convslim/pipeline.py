"""Export and verification steps of ``compress``, kept apart from the API surface.

Order: export the BN-folded original and the compressed model (same exporter, same options) into a scratch
folder, check ONNX vs PyTorch parity, compare compressed vs original outputs, time both in ORT, then write the
outputs through a staging folder so ``out_dir`` appears whole or not at all.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from convslim.convert import get_form
from convslim.core import Plan, Prepared
from convslim.export import export_onnx, export_program, op_counts
from convslim.outputs import staged_output_dir
from convslim.report import Report
from convslim.verify import compare_models, cuda_available_for_ort, measure_speed, onnx_parity

PARITY_BATCH_SIZES = (1, 4)


def weight_errors(prepared: Prepared, plan: Plan) -> dict[str, float | None]:
    modules = dict(prepared.traced.module.named_modules())
    return {d.name: get_form(d.form).weight_error(modules[d.name], d.setting) for d in plan.rewritten}


def parity_batches(example_inputs: tuple, calibration: torch.Tensor | None) -> list[tuple]:
    """Random inputs shaped like the example (batch 1 and 4), plus up to 64 real samples when given."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for batch in PARITY_BATCH_SIZES:
        batches.append(
            tuple(
                torch.randn((batch, *t.shape[1:]), generator=generator, dtype=t.dtype)
                if t.is_floating_point()
                else t
                for t in example_inputs
            )
        )
    if calibration is not None:
        batches.append((calibration[:64],))
    return batches


def export_and_verify(
    prepared: Prepared,
    compressed: nn.Module,
    plan: Plan,
    report: Report,
    scratch: Path,
    *,
    out_dir: str | Path | None,
    overwrite: bool,
    batch_sizes: Sequence[int],
    tolerance: float,
    calibration: torch.Tensor | None,
    progress: bool,
) -> None:
    example = prepared.example_inputs
    t0 = time.perf_counter()
    program = export_program(compressed, example)
    onnx_model = export_onnx(program, example, scratch / "model.onnx")
    original_program = export_program(prepared.traced.module, example)
    export_onnx(original_program, example, scratch / "original.onnx")
    report.timings_s["export"] = time.perf_counter() - t0
    ops = op_counts(onnx_model)
    report.parity["onnx_ops"] = ops
    if ops.get("BatchNormalization"):
        report.notes.append(
            f"{ops['BatchNormalization']} BatchNormalization node(s) remain in the ONNX graph "
            "(BatchNorm that does not follow a conv, or tracing fell back)"
        )

    t0 = time.perf_counter()
    batches = parity_batches(example, calibration)
    report.parity["onnx_vs_torch"] = onnx_parity(scratch / "model.onnx", compressed, batches, rtol=tolerance)
    report.parity["compressed_vs_original"] = compare_models(prepared.original, compressed, batches)
    report.passed = report.parity["onnx_vs_torch"]["passed"]
    if batch_sizes:
        report.speed["ort_cpu"] = measure_speed(
            scratch / "original.onnx", scratch / "model.onnx", example, batch_sizes, progress=progress
        )
        cuda_reason = cuda_available_for_ort()
        if cuda_reason:
            report.speed["ort_cuda"] = {"skipped": cuda_reason}
        else:
            report.speed["ort_cuda"] = measure_speed(
                scratch / "original.onnx",
                scratch / "model.onnx",
                example,
                batch_sizes,
                provider="CUDAExecutionProvider",
            )
    report.timings_s["verify"] = time.perf_counter() - t0

    if out_dir is not None:
        with staged_output_dir(out_dir, overwrite=overwrite) as staging:
            shutil.copyfile(scratch / "model.onnx", staging / "model.onnx")
            torch.export.save(program, str(staging / "compressed.pt2"))
            torch.save(compressed.state_dict(), staging / "compressed_state_dict.pt")
            (staging / "plan.json").write_text(plan.to_json())
            report.outputs = {
                name: str(Path(out_dir) / name)
                for name in (
                    "model.onnx",
                    "compressed.pt2",
                    "compressed_state_dict.pt",
                    "plan.json",
                    "report.json",
                    "report.md",
                )
            }
            write_report(report, staging)


def write_report(report: Report, folder: Path) -> None:
    import json

    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (folder / "report.md").write_text(report.to_markdown())
