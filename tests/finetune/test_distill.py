"""Stage 2 lowers the distillation loss; the whole hook returns the plan's structure, scored per stage."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convslim.errors import UsageError
from convslim.finetune import FinetuneSettings, finetune
from convslim.finetune.batches import Batch, training_batches
from convslim.finetune.distill import blocks_of, kd_phase
from convslim.finetune.loop import BestKeeper, Phase
from convslim.finetune.losses import kd_loss, relative_mse
from convslim.finetune.stopping import StopFlag, TrainBudget
from convslim.finetune.views import augment, mixup


def _kd_loss(student, teacher, x, temperature=4.0):
    with torch.no_grad():
        s, t = student.eval()(x), teacher(x)
        return float(
            F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        )


def test_blocks_group_by_parent_module():
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "fc"]
    assert blocks_of(names) == [["conv1"], ["layer1.0.conv1", "layer1.0.conv2"], ["layer1.1.conv1"], ["fc"]]


def test_kd_phase_lowers_kd_loss(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    teacher = prepared.traced.module
    names = [d.name for d in p.rewritten]
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.1 * torch.randn_like(param))  # a damaged start, as after a coarse rewrite
    before = _kd_loss(student, teacher, tiny_data.x)
    settings = FinetuneSettings(lr=3e-3, evals=1)
    batches = iter(lambda: Batch(tiny_data.x[:48], tiny_data.y[:48]), None)
    params = [q for q in student.parameters() if q.requires_grad]
    phase = Phase(student, params, settings, TrainBudget(40, None), StopFlag(), "distill")
    summary, _ = kd_phase(teacher, phase, names, batches)
    assert summary["steps"] == 40
    assert _kd_loss(student, teacher, tiny_data.x) < 0.7 * before


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 7), st.booleans(), st.integers(0, 2**16))
def test_relative_error_and_its_gradient_are_the_ratio_of_means_in_the_features_layout(
    n, c, side, channels_last, seed
):
    """``relative_mse`` (its own autograd function) gives mean((s−t)²) / mean(t²) and autograd's gradient of
    that formula, in ``s``'s memory format; a target of zeros gets the 1e-12 floor, not a division by 0."""
    generator = torch.Generator().manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    s = torch.randn(n, c, side, side, generator=generator, dtype=torch.float64).contiguous(
        memory_format=layout
    )
    t = torch.randn(n, c, side, side, generator=generator, dtype=torch.float64).contiguous(
        memory_format=layout
    )
    s.requires_grad_(True)
    loss = relative_mse(s, t)
    loss.backward()
    reference = s.detach().clone().requires_grad_(True)
    expected = F.mse_loss(reference, t) / t.pow(2).mean()
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert torch.allclose(s.grad, reference.grad, rtol=1e-10, atol=1e-14)
    assert s.grad.is_contiguous(memory_format=layout)
    zeros = torch.zeros_like(t)
    assert float(relative_mse(s.detach(), zeros)) == pytest.approx(float(s.detach().pow(2).mean()) / 1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**16))
def test_mse_distillation_is_the_squared_logit_error_and_its_gradient(n, k, seed):
    generator = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=generator, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, k, generator=generator, dtype=torch.float64)
    loss = kd_loss(s, t, None, 4.0, 1.0, kind="mse")
    loss.backward()
    expected = sum(float(((s[i] - t[i]) ** 2).sum()) for i in range(n)) / n
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(s.grad, 2 * (s - t).detach() / n)
    assert float(kd_loss(t.clone(), t, None, 4.0, 1.0, kind="mse")) == 0.0


def test_phase_b_distils_with_the_loss_asked_for(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    teacher = prepared.traced.module
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.1 * torch.randn_like(param))
        gap = lambda: float((student.eval()(tiny_data.x) - teacher(tiny_data.x)).pow(2).sum(1).mean())  # noqa: E731
        before = gap()
    phase_settings = FinetuneSettings(lr=3e-3, evals=1, distill_loss="mse", ce_weight=0.0)
    batches = iter(lambda: Batch(tiny_data.x[:48], tiny_data.y[:48]), None)
    params = [q for q in student.parameters() if q.requires_grad]
    phase = Phase(student, params, phase_settings, TrainBudget(40, None), StopFlag(), "distill")
    summary, _ = kd_phase(teacher, phase, [d.name for d in p.rewritten], batches)
    assert summary["loss_first"] > summary["loss_last"]
    with torch.no_grad():
        assert gap() < 0.5 * before
    with pytest.raises(UsageError, match="--distill-loss"):
        finetune(tiny_data, steps=3, distill_loss="l1")


def test_finetune_hook_end_to_end(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.3 * torch.randn_like(param))
    hook = finetune(tiny_data, tiny_data, steps=30, batch_size=32, lr=3e-3, progress=False)
    model, report = hook(prepared, student, p)
    kinds = lambda m: [type(sub).__name__ for sub in m.modules()]  # noqa: E731
    assert kinds(model) == kinds(student)
    assert set(model.state_dict()) == set(student.state_dict())  # BN wrappers folded away again
    acc = report["accuracy"]
    assert acc["metric"] == "top1" and acc["original"] == 1.0
    assert acc["stage2"] >= acc["compressed"]
    assert report["interrupted"] is False and report["stage2_distill"]["steps"] > 0
    assert all(r["error_after"] <= r["error_before"] for r in report["stage1"]["layers"])


def test_augment_keeps_shape_and_moves_pixels():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    out = augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and not torch.equal(out, x)
    small = torch.randn(2, 3, 8, 8)
    assert augment(small, torch.Generator()) is small


def test_mixup_blends_pairs_of_samples_of_the_batch():
    x = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(8)])
    out = mixup(x, torch.Generator().manual_seed(0), alpha=1.0)
    assert out.shape == x.shape and not torch.equal(out, x)
    # each sample is λ·x_i + (1−λ)·x_j: constant per sample and within the batch's range
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))
    assert out.min() >= 0 and out.max() <= 7
    assert mixup(x, torch.Generator(), alpha=0.0) is x


def test_mixup_batches_carry_no_labels_so_the_teacher_is_the_target(tiny_data):
    s = FinetuneSettings(batch_size=16, mixup=0.4, augment=False, channels_last=False)
    mixed = next(training_batches(tiny_data, s, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert mixed.y is None and mixed.index is None and mixed.x.shape == (16, 3, 16, 16)
    plain = FinetuneSettings(batch_size=16, augment=False, channels_last=False)
    batch = next(training_batches(tiny_data, plain, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert batch.y is not None and not torch.equal(mixed.x, batch.x)  # same batch order, mixed images
    assert torch.equal(batch.x, tiny_data.x[batch.index])  # the view is rebuilt from its index


def test_finetune_with_mixup_recovers_a_damaged_model(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.3 * torch.randn_like(param))
    hook = finetune(tiny_data, tiny_data, steps=30, batch_size=32, lr=3e-3, mixup=0.4, progress=False)
    _, report = hook(prepared, student, p)
    assert report["accuracy"]["stage2"] >= report["accuracy"]["compressed"]
    assert report["settings"]["mixup"] == 0.4
    with pytest.raises(UsageError, match="--mixup"):
        finetune(tiny_data, steps=3, mixup=-1.0)


def test_stage2_that_scores_below_stage1_returns_the_stage1_weights(tiny_compressed, tiny_data, monkeypatch):
    import convslim.finetune.recipe as recipe

    def wrecking_stage2(stage, heads):
        with torch.no_grad():
            for param in stage.student.parameters():
                param.copy_(torch.randn_like(param))  # what a far too high learning rate does
        return recipe.Stage2Result(best=None, wrapped=[], report={})

    monkeypatch.setattr(recipe, "_stage2", wrecking_stage2)
    prepared, p, student = tiny_compressed
    model, report = finetune(tiny_data, tiny_data, steps=2, progress=False)(prepared, student, p)
    accuracy = report["accuracy"]
    assert accuracy["stage2"] < accuracy["stage1"] and report["kept"] == "stage1"
    with torch.no_grad():
        predicted = model.eval()(tiny_data.x).argmax(1)
    assert float((predicted == tiny_data.y).float().mean()) == pytest.approx(accuracy["stage1"], abs=1e-4)


@pytest.mark.parametrize("given, expected", [([], "mse"), (["--distill-loss", "kl"], "kl")])
def test_cli_passes_the_distillation_loss_on(given, expected):
    from convslim.cli.args import recipe_settings
    from convslim.cli.commands import build_parser

    argv = ["compress", "m.pt", "--input-shape", "1,3,16,16", "--out", "out", *given]
    args = build_parser().parse_args(argv)
    assert FinetuneSettings(**recipe_settings(args)).distill_loss == expected


@pytest.mark.parametrize("scale", [1.0, 5 / 3])
def test_phase_b_peaks_at_the_learning_rate_times_its_scale(tiny_compressed, tiny_data, monkeypatch, scale):
    import convslim.finetune.recipe as recipe

    peaks = {}
    for name in ("feature_phase", "kd_phase"):
        original = getattr(recipe, name)

        def spy(teacher, phase, *rest, _original=original, _name=name, **kw):
            peaks[_name] = phase.settings.lr
            return _original(teacher, phase, *rest, **kw)

        monkeypatch.setattr(recipe, name, spy)
    prepared, p, student = tiny_compressed
    hook = finetune(tiny_data, None, steps=4, lr=2e-3, distill_lr_scale=scale, progress=False)
    hook(prepared, student, p)
    assert peaks == {"feature_phase": 2e-3, "kd_phase": pytest.approx(2e-3 * scale)}


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_a_phase_b_scale_that_is_not_positive_is_refused(scale):
    with pytest.raises(UsageError, match="distill-lr-scale"):
        FinetuneSettings(distill_lr_scale=scale).check()


def test_cli_passes_the_phase_b_scale_on():
    from convslim.cli.args import recipe_settings
    from convslim.cli.commands import build_parser

    argv = ["compress", "m.pt", "--input-shape", "1,3,16,16", "--out", "out", "--distill-lr-scale", "1"]
    args = build_parser().parse_args(argv)
    assert FinetuneSettings(**recipe_settings(args)).distill_lr_scale == 1.0
    assert FinetuneSettings().distill_lr_scale == pytest.approx(5 / 3)


def test_of_tied_validation_scores_the_later_weights_are_kept():
    """The keeper validates at evenly spaced points; a later checkpoint that ties the best has trained longer
    and replaces it, a lower one does not."""
    student = nn.Linear(2, 1)
    settings = replace(FinetuneSettings(), evals=3)
    phase = Phase(student, list(student.parameters()), settings, TrainBudget(3, None), StopFlag(), "test")
    scores = iter([0.5, 0.5, 0.4])
    keeper = BestKeeper(phase, lambda model: next(scores))
    for step in range(1, 4):
        with torch.no_grad():
            student.bias.fill_(float(step))
        phase.budget.done = step
        keeper(loss=0.0)
    assert [h["score"] for h in keeper.history] == [0.5, 0.5, 0.4]
    assert keeper.best == 0.5
    assert float(keeper.best_state["bias"]) == 2.0
