r"""Stage 2: distillation from the original (teacher) into the compressed model (student), in two phases.

Phase A, block-wise feature distillation. Rewritten layers are grouped into blocks by their module path
(``layer1.0.conv1`` and ``layer1.0.conv2`` → block ``layer1.0``). The first layer of each block takes the
*teacher's* input (teacher forcing), the rest of the block runs on the student's own activations, and the
loss is Σ_blocks ‖s_out − t_out‖² / ‖t_out‖² at the block's last rewritten layer. All blocks train at once, and
errors do not compound across blocks, so damaged layers recover fast.

Phase B, end-to-end knowledge distillation (Hinton et al. 2015):

    L = T² · KL(softmax(t/T) ‖ softmax(s/T)) + w_ce · CE(s, y) [labels given] + w_f · Σ_l ‖s_l − t_l‖²/‖t_l‖²

(N×K outputs; other outputs use the relative MSE in place of KL/CE). Both phases use AdamW or SGD (momentum
0.9) with a cosine learning-rate schedule over their step/time budget; Phase B validates at intervals and keeps
the best weights. Under torchrun both train in DistributedDataParallel with synchronised BatchNorms
(``convslim.parallel``); ranks agree every step on stopping and on the clock.

Example:
    >>> feature_phase(teacher, student, names, batches, settings, budget, stop)
    >>> history, best = kd_phase(teacher, student, names, batches, settings, budget, stop, validate)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from convslim import parallel


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


def make_optimizer(params, settings):
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay
        )
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _set_lr(optimizer, base: float, progress: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _relative_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)


def feature_phase(teacher, student, names, batches, settings, budget, stop, progress=False) -> dict:
    """Phase A (see module docstring). ``batches`` yields augmented (x, y); returns a small summary."""
    groups = blocks_of(names)
    forced: dict[str, torch.Tensor] = {}
    t_out: dict[str, torch.Tensor] = {}
    s_out: dict[str, torch.Tensor] = {}
    handles = []
    for group in groups:
        first, last = group[0], group[-1]
        handles.append(teacher.get_submodule(first).register_forward_pre_hook(_store_input(forced, first)))
        handles.append(teacher.get_submodule(last).register_forward_hook(_store_output(t_out, last)))
        handles.append(student.get_submodule(first).register_forward_pre_hook(_force_input(forced, first)))
        handles.append(student.get_submodule(last).register_forward_hook(_store_output(s_out, last)))
    params = [p for n in names for p in student.get_submodule(n).parameters() if p.requires_grad]
    loss_fn = lambda x, y: sum(_relative_mse(s_out[g[-1]], t_out[g[-1]]) for g in groups) / len(groups)  # noqa: E731
    with _hooks(handles):
        return _train(
            teacher,
            student,
            params,
            batches,
            loss_fn,
            settings=settings,
            budget=budget,
            stop=stop,
            progress=progress,
            desc="stage 2a: blocks",
        )


def _store_input(store, key):
    def hook(mod, args):
        store[key] = args[0].detach()

    return hook


def _store_output(store, key):
    def hook(mod, args, out):
        store[key] = out

    return hook


def _force_input(store, key):
    def hook(mod, args):
        return (store[key],) + tuple(args[1:])

    return hook


def kd_phase(teacher, student, names, batches, settings, budget, stop, validate=None, progress=False):
    """Phase B (see module docstring). Returns (summary, best state_dict or None)."""
    t_feats: dict[str, torch.Tensor] = {}
    s_feats: dict[str, torch.Tensor] = {}
    handles = []
    if settings.feature_weight > 0:
        for n in names:
            handles.append(teacher.get_submodule(n).register_forward_hook(_store_output(t_feats, n)))
            handles.append(student.get_submodule(n).register_forward_hook(_store_output(s_feats, n)))
    temperature = settings.temperature

    def loss_fn(outputs, teacher_outputs, y):
        s, t = outputs, teacher_outputs
        if s.dim() != 2:
            loss = _relative_mse(s, t)
        else:
            loss = (
                F.kl_div(
                    F.log_softmax(s / temperature, 1),
                    F.log_softmax(t / temperature, 1),
                    reduction="batchmean",
                    log_target=True,
                )
                * temperature**2
            )
            if y is not None and settings.ce_weight > 0:
                loss = loss + settings.ce_weight * F.cross_entropy(s, y)
        if handles:
            loss = loss + settings.feature_weight * sum(
                _relative_mse(s_feats[n], t_feats[n]) for n in names
            ) / len(names)
        return loss

    params = [p for p in student.parameters() if p.requires_grad]
    with _hooks(handles):
        return _train(
            teacher,
            student,
            params,
            batches,
            loss_fn,
            settings=settings,
            budget=budget,
            stop=stop,
            progress=progress,
            desc="stage 2b: distill",
            validate=validate,
            end_to_end=True,
        )


def _train(
    teacher,
    student,
    params,
    batches,
    loss_fn,
    *,
    settings,
    budget,
    stop,
    progress,
    desc,
    validate=None,
    end_to_end=False,
):
    """The shared loop of both phases: cosine LR over ``budget``, stops on ``stop``; with ``validate`` it scores
    at ``settings.evals`` points and keeps the best weights. ``end_to_end``: ``loss_fn(student_logits,
    teacher_logits, y)``, else ``loss_fn(x, y)`` (the block losses come from hooks)."""
    optimizer = make_optimizer(params, settings)
    history, best, best_state = [], None, None
    next_eval = 1.0 / max(settings.evals, 1)
    seen, t0, losses = 0, time.perf_counter(), []
    bar = tqdm(desc=desc, total=budget.steps, disable=not (progress and parallel.is_main()), leave=False)
    with _data_parallel(student, params, settings) as forward:
        while True:
            parallel.agree(stop, budget)  # all ranks stop together, on rank 0's clock
            if not budget.left() or stop.requested:
                break
            x, y = next(batches)
            with torch.no_grad():
                t_logits = teacher(x)
            student.train()
            s_logits = forward(x)
            loss = loss_fn(s_logits, t_logits, y) if end_to_end else loss_fn(x, y)
            if forward is not student:  # every trainable parameter gets a gradient (DDP waits for each)
                loss = loss + 0.0 * sum(p.sum() for p in params)
            _set_lr(optimizer, settings.lr, budget.progress())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            budget.done += 1
            seen += len(x) * parallel.world()
            losses.append(float(loss.detach()))
            postfix = {"loss": f"{losses[-1]:.4f}", "img/s": f"{seen / (time.perf_counter() - t0):.0f}"}
            if validate is not None and (budget.progress() >= next_eval or not budget.left()):
                next_eval += 1.0 / max(settings.evals, 1)
                score = validate(student)
                if score is None:  # no validation data: nothing to keep best by
                    validate = None
                else:
                    history.append({"step": budget.done, "score": score, "loss": losses[-1]})
                    if best is None or score > best:
                        best, best_state = score, copy.deepcopy(student.state_dict())
                    postfix["val"] = f"{score:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    bar.close()
    if parallel.active():  # each rank saw its slice: report the mean loss over ranks
        total = parallel.all_sum(torch.tensor(losses, dtype=torch.float64))
        losses = (total / parallel.world()).tolist()
    elapsed = time.perf_counter() - t0
    summary = {
        "steps": budget.done,
        "seconds": round(elapsed, 1),
        "images_per_s": round(seen / max(elapsed, 1e-9), 1),
        "loss_first": _mean(losses[:10]),
        "loss_last": _mean(losses[-10:]),
        "validations": history,
        "best_score": best,
    }
    return (summary, best_state) if end_to_end else summary


@contextlib.contextmanager
def _data_parallel(student, params, settings):
    """Under torchrun: ``student`` in DistributedDataParallel over ``params`` only (the rest frozen meanwhile),
    its BatchNorms synchronised where ``parallel.syncs_batchnorm`` says; alone: ``student`` itself. Hooks
    and state stay on ``student``."""
    if not parallel.active():
        yield student
        return
    chosen = {id(p) for p in params}
    frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in chosen]
    for p in frozen:
        p.requires_grad_(False)
    synced = parallel.syncs_batchnorm(settings.sync_batchnorm, settings.batch_size)
    swapped = parallel.sync_batchnorms(student) if synced else []
    try:
        yield parallel.data_parallel(student, next(iter(params)).device)
    finally:
        parallel.plain_batchnorms(swapped)
        for p in frozen:
            p.requires_grad_(True)


def _mean(values):
    return round(sum(values) / len(values), 5) if values else None
