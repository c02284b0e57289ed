"""Phase B replays phase A's views with the teacher's logged outputs, averaged with its mirror image's on ask."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from convslim.cli.args import data_sets, finetune_inputs
from convslim.cli.commands import build_parser
from convslim.finetune.batches import training_batches
from convslim.finetune.distill import feature_phase
from convslim.finetune.loop import Phase
from convslim.finetune.replay import TeacherLog
from convslim.finetune.settings import FinetuneSettings
from convslim.finetune.stopping import StopFlag, TrainBudget
from convslim.inputs.data import ArrayData

CPU = torch.device("cpu")


def _phase_a(tiny_compressed, tiny_data, settings: FinetuneSettings) -> tuple[dict, TeacherLog]:
    """Three steps of phase A on a fresh copy of the student, batches drawn with seed 0."""
    prepared, p, student = tiny_compressed
    student = copy.deepcopy(student)
    names = [d.name for d in p.rewritten]
    params = [q for n in names for q in student.get_submodule(n).parameters() if q.requires_grad]
    phase = Phase(student, params, settings, TrainBudget(3, None), StopFlag(), "blocks", False)
    batches = training_batches(tiny_data, settings, torch.Generator().manual_seed(0), CPU)
    log = TeacherLog.for_run(tiny_data, settings)
    return feature_phase(prepared.traced.module, phase, names, batches, log), log


def test_replayed_targets_average_the_teacher_on_each_view_and_its_mirror(tiny_compressed, tiny_data):
    settings = FinetuneSettings(batch_size=32, channels_last=False, progress=False)
    assert settings.teacher_mirror  # the default
    _, log = _phase_a(tiny_compressed, tiny_data, settings)
    teacher = tiny_compressed[0].traced.module
    batch = next(log.replay(torch.Generator().manual_seed(1), CPU))
    with torch.no_grad():
        own, mirrored = teacher(batch.x), teacher(batch.x.flip(3))
    assert not torch.allclose(own, mirrored, atol=1e-3)  # the tiny teacher is not mirror-symmetric
    assert torch.allclose(batch.teacher, (own + mirrored) / 2, atol=1e-5)


def test_the_mirror_pass_leaves_phase_a_training_on_the_views_own_pass(tiny_compressed, tiny_data):
    """The mirror pass runs first, so the hooks that force teacher inputs keep the view's own pass."""
    on = FinetuneSettings(batch_size=32, channels_last=False, progress=False)
    mirrored, _ = _phase_a(tiny_compressed, tiny_data, on)
    plain, log = _phase_a(tiny_compressed, tiny_data, dataclasses.replace(on, teacher_mirror=False))
    assert mirrored["loss_first"] == pytest.approx(plain["loss_first"], rel=1e-6)
    assert mirrored["loss_last"] == pytest.approx(plain["loss_last"], rel=1e-6)
    teacher = tiny_compressed[0].traced.module
    batch = next(log.replay(torch.Generator().manual_seed(1), CPU))
    with torch.no_grad():
        assert torch.allclose(batch.teacher, teacher(batch.x), atol=1e-5)


@pytest.mark.parametrize("changes", [{"teacher_mirror": False}, {"augment": False}])
def test_no_mirror_without_the_setting_or_without_augmentation(tiny_data, changes):
    log = TeacherLog.for_run(tiny_data, FinetuneSettings(**changes))
    assert log.mirror is False
    batch = next(training_batches(tiny_data, FinetuneSettings(**changes), torch.Generator(), CPU))
    assert log.mirrored(torch.nn.Identity(), batch) is None


@pytest.mark.parametrize("given, expected", [([], True), (["--no-teacher-mirror"], False)])
def test_cli_turns_the_mirror_off(tiny, tmp_path, given, expected):
    """The flag reaches the settings the fine-tune runs with, not only the parser."""
    rng = np.random.default_rng(0)
    data = tmp_path / "train.npz"
    np.savez(data, x=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), y=rng.integers(0, 4, 40))
    argv = ["compress", "m.pt", "--input-shape", "1,3,16,16", "--out", "out", "--data", str(data), *given]
    args = build_parser().parse_args(argv)
    inputs = (torch.randn(1, 3, 16, 16),)
    hook, _ = finetune_inputs(args, tiny, inputs, data_sets(args, tiny, inputs))
    assert hook.settings.teacher_mirror is expected


def test_inputs_without_a_mirror_image_turn_the_mirror_off():
    data = ArrayData(torch.randn(64, 12), torch.randint(0, 3, (64,)))  # features, not images
    settings = FinetuneSettings(batch_size=16, channels_last=False)
    log = TeacherLog.for_run(data, settings)
    batch = next(training_batches(data, settings, torch.Generator().manual_seed(0), CPU))
    assert log.mirror is True
    assert log.mirrored(torch.nn.Linear(12, 3), batch) is None
    assert log.mirror is False  # so the report does not say the outputs were averaged with mirror images
