r"""Stage 2: distillation from the original (teacher) into the compressed model (student), in two phases.

Phase A, block-wise feature distillation. Rewritten layers are grouped into blocks by their module path
(``layer1.0.conv1`` and ``layer1.0.conv2`` → block ``layer1.0``). The first layer of each block takes the
*teacher's* input (teacher forcing), the rest of the block runs on the student's own activations, and the
loss is Σ_blocks ‖s_out − t_out‖² / ‖t_out‖² at the block's last rewritten layer (``losses.relative_mse``).
All blocks train at once, and errors do not compound across blocks, so damaged layers recover fast. The
teacher's outputs on phase A's views (with ``teacher_mirror``, averaged with its outputs on their mirror
images) are logged for phase B (``replay``).

Phase B, end-to-end knowledge distillation (Hinton et al. 2015):

    L = T² · KL(softmax(t/T) ‖ softmax(s/T)) + w_ce · CE(s, y) [labels given] + w_f · Σ_l ‖s_l − t_l‖²/‖t_l‖²

or with ``distill_loss="mse"`` the squared logit error ‖s − t‖² in place of the KL term (``losses.kd_loss``)

(N×K outputs; other outputs use the relative MSE in place of KL/CE), on phase A's views with the teacher's
logged outputs when it can (``replay``), else on fresh views with the teacher run live. Both phases share one
loop (``loop``: AdamW or SGD, cosine or one-cycle learning rate over the phase's budget); phase B validates at
intervals and keeps the best weights. Under torchrun both train in DistributedDataParallel with synchronised
BatchNorms (``convslim.parallel``); ranks agree every step on stopping and on the clock.

Example:
    >>> summary = feature_phase(teacher, phase, names, batches, log)
    >>> summary, best = kd_phase(teacher, phase, names, batches, validate)
"""

from __future__ import annotations

import contextlib

import torch

from convslim.finetune.batches import Batch
from convslim.finetune.loop import BestKeeper, Phase, train
from convslim.finetune.losses import kd_loss, relative_mse
from convslim.finetune.replay import TeacherLog
from convslim.finetune.teacher import full_precision


def blocks_of(names: list[str]) -> list[list[str]]:
    """Consecutive layers that share a parent module path form a block."""
    groups: list[list[str]] = []
    for name in names:
        parent = name.rpartition(".")[0]
        if groups and parent and groups[-1][0].rpartition(".")[0] == parent:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


@contextlib.contextmanager
def _hooks(handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def feature_phase(teacher, phase: Phase, names: list[str], batches, log: TeacherLog | None = None) -> dict:
    """Phase A (see module docstring): ``phase.params`` are the rewritten layers' parameters. Returns its
    summary; the teacher's outputs go to ``log``."""
    groups = blocks_of(names)
    forced: dict[str, torch.Tensor] = {}
    t_out: dict[str, torch.Tensor] = {}
    s_out: dict[str, torch.Tensor] = {}
    student, handles = phase.student, []
    for group in groups:
        first, last = group[0], group[-1]
        handles.append(teacher.get_submodule(first).register_forward_pre_hook(_store_input(forced, first)))
        handles.append(teacher.get_submodule(last).register_forward_hook(_store_output(t_out, last)))
        handles.append(student.get_submodule(first).register_forward_pre_hook(_force_input(forced, first)))
        handles.append(student.get_submodule(last).register_forward_hook(_store_output(s_out, last)))

    def loss_of(forward, batch: Batch) -> torch.Tensor:
        teacher_pass(teacher, batch, log)
        forward(batch.x)
        return sum(relative_mse(s_out[g[-1]], t_out[g[-1]]) for g in groups) / len(groups)

    with _hooks(handles):
        return train(phase, batches, loss_of)


def teacher_pass(teacher, batch: Batch, log: TeacherLog | None) -> None:
    """A phase-A step's teacher forwards: on the views' mirror images first (when ``log`` averages them in;
    hooks keep the last pass, which must be the views'), then on the views, their outputs logged for phase B."""
    mirrored = log.mirrored(teacher, batch) if log is not None else None
    with torch.no_grad():
        logits = teacher(batch.x)
    if log is not None:
        log.record(batch, logits, mirrored)


def _store_input(store, key):
    def hook(mod, args):
        store[key] = full_precision(args[0].detach())

    return hook


def _store_output(store, key):
    def hook(mod, args, out):
        store[key] = full_precision(out)

    return hook


def _force_input(store, key):
    def hook(mod, args):
        return (store[key],) + tuple(args[1:])

    return hook


def kd_phase(teacher, phase: Phase, names: list[str], batches, validate=None):
    """Phase B (see module docstring). Returns (summary, best state_dict or None)."""
    s = phase.settings
    t_feats: dict[str, torch.Tensor] = {}
    s_feats: dict[str, torch.Tensor] = {}
    handles = []
    if s.feature_weight > 0:
        for n in names:
            handles.append(teacher.get_submodule(n).register_forward_hook(_store_output(t_feats, n)))
            handles.append(phase.student.get_submodule(n).register_forward_hook(_store_output(s_feats, n)))

    def loss_of(forward, batch: Batch) -> torch.Tensor:
        target = batch.teacher
        if target is None:
            with torch.no_grad():
                target = teacher(batch.x)
        loss = kd_loss(forward(batch.x), target, batch.y, s.temperature, s.ce_weight, s.distill_loss)
        if handles:
            features = sum(relative_mse(s_feats[n], t_feats[n]) for n in names) / len(names)
            loss = loss + s.feature_weight * features
        return loss

    keeper = BestKeeper(phase, validate)
    with _hooks(handles):
        summary = train(phase, batches, loss_of, keeper)
    summary.update(validations=keeper.history, best_score=keeper.best)
    return summary, keeper.best_state
