"""Stage 2's teacher: bfloat16 only where asked or where the CPU has it, float32 outputs and hooks either way."""

from __future__ import annotations

import pytest
import torch

import convslim.finetune.teacher as teacher_module
from convslim.errors import UsageError
from convslim.finetune import FinetuneSettings, finetune
from convslim.finetune.loop import Phase, student_forward
from convslim.finetune.stopping import StopFlag, TrainBudget
from convslim.finetune.teacher import StageTeacher, autocast_dtype, full_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "precision, flags, device, expected",
    [
        ("fp32", {"avx512_bf16"}, CPU, None),
        ("bf16", set(), CPU, torch.bfloat16),
        ("auto", {"avx2", "avx512_bf16"}, CPU, torch.bfloat16),
        ("auto", {"avx2", "amx_bf16"}, CPU, torch.bfloat16),
        ("auto", {"avx2", "avx512f", "avx512_vnni"}, CPU, None),  # AVX-512 without bf16: emulated, slower
        ("auto", set(), CPU, None),
        ("auto", {"avx512_bf16"}, torch.device("cuda"), None),
    ],
)
def test_auto_takes_bfloat16_only_on_a_cpu_that_computes_it(monkeypatch, precision, flags, device, expected):
    monkeypatch.setattr(teacher_module, "cpu_flags", lambda: frozenset(flags))
    assert autocast_dtype(precision, device) == expected


def test_full_precision_widens_16_bit_floats_and_leaves_the_rest_as_they_are():
    x = torch.randn(3, 4)
    assert full_precision(x) is x
    assert full_precision(x.to(torch.bfloat16)).dtype == torch.float32
    assert full_precision(x.double()).dtype == torch.float64
    ints = torch.arange(3)
    assert full_precision(ints) is ints


def test_a_bfloat16_teacher_gives_float32_outputs_close_to_the_original(tiny_compressed, tiny_data):
    prepared, p, _ = tiny_compressed
    original = prepared.traced.module.eval()
    layer = p.rewritten[0].name
    with torch.no_grad():
        exact = original(tiny_data.x)
    for dtype, tolerance in ((None, 0.0), (torch.bfloat16, 0.03)):
        out = StageTeacher(original, dtype)(tiny_data.x)
        assert out.dtype == torch.float32 and not out.requires_grad
        assert float((out - exact).norm() / exact.norm()) <= tolerance
    assert StageTeacher(original, None).get_submodule(layer) is original.get_submodule(layer)


@pytest.mark.parametrize("precision, described", [("bf16", "bfloat16 autocast"), ("fp32", "float32")])
def test_stage_2_trains_with_either_teacher_and_says_which(tiny_compressed, tiny_data, precision, described):
    prepared, p, student = tiny_compressed
    hook = finetune(tiny_data, tiny_data, steps=6, teacher_precision=precision, progress=False)
    model, report = hook(prepared, student, p)
    assert report["stage2_distill"]["teacher_precision"] == described
    assert report["stage2_blocks"]["steps"] > 0
    assert all(torch.isfinite(q).all() for q in model.parameters())


def test_an_unknown_teacher_precision_is_refused():
    with pytest.raises(UsageError, match="--teacher-precision must be one of auto, fp32, bf16"):
        FinetuneSettings(teacher_precision="fp16").check()


def test_cli_passes_the_teacher_precision_on():
    from convslim.cli.args import recipe_settings
    from convslim.cli.commands import build_parser

    argv = ["compress", "m.pt", "--input-shape", "1,3,16,16", "--out", "out", "--teacher-precision", "fp32"]
    args = build_parser().parse_args(argv)
    assert FinetuneSettings(**recipe_settings(args)).teacher_precision == "fp32"
    assert FinetuneSettings().teacher_precision == "auto"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_student_forward_computes_as_asked_and_keeps_float32_losses(
    tiny_compressed, tiny_data, precision
):
    """``student_forward``: fp32 leaves the forward as it is; bf16 autocasts it, and its outputs come back in
    float32, close to the float32 forward's, with gradients reaching every trainable parameter."""
    _, _, student = tiny_compressed
    params = [q for q in student.parameters() if q.requires_grad]
    s = FinetuneSettings(student_precision=precision)
    phase = Phase(student, params, s, TrainBudget(1, None), StopFlag(), "test")
    forward = student_forward(student, phase)
    assert (forward is student) == (precision == "fp32")
    student.eval()
    with torch.no_grad():
        exact = student(tiny_data.x)
    out = forward(tiny_data.x)
    assert out.dtype == torch.float32
    assert float((out - exact).norm() / exact.norm()) <= (0.0 if precision == "fp32" else 0.05)
    out.square().mean().backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in params)


def test_stage_2_trains_a_bfloat16_student_and_says_so(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    hook = finetune(tiny_data, tiny_data, steps=6, student_precision="bf16", progress=False)
    model, report = hook(prepared, student, p)
    assert report["stage2_distill"]["student_precision"] == "bfloat16 autocast"
    assert all(torch.isfinite(q).all() for q in model.parameters())
    with pytest.raises(UsageError, match="--student-precision must be one of auto, fp32, bf16"):
        FinetuneSettings(student_precision="fp16").check()
