"""Recipe variants that were measured and not built (README, issue 25's and issue 28's tables), kept runnable so
that their RESULTS rows can be reproduced. Each variant patches one library function in this process only, then
runs ``bench_finetune.py`` (or ``bench_datafree.py``) with the arguments after ``--``.

Variants (the data-free ones, native-coarse, precise-bn and mirror-calib, in ``ablations_datafree.py``):
  relu-mid         a ReLU between each dwsep layer's depthwise and pointwise parts, started in its linear region:
                   after stage 1, each depthwise filter's bias is raised by the negative of its output's minimum
                   over four calibration batches, b_D ← b_D + s, and each pointwise bias lowered to match,
                   b_P ← b_P − P·s, so the model computes what it did and stage 2 may bend it (ORT fuses
                   Conv + Relu, so it would cost nothing deployed)
  phase-lr         phase A and phase B with their own one-cycle peaks (``--phase-a-lr``, ``--phase-b-lr``)
  mirror-features  phase A's block targets averaged with the teacher's block outputs on the mirror image, flipped
                   back: t ← (t(x) + flip(t(flip(x)))) / 2, the flip TTA the logged logits get (no extra forward)
  centred-mse      phase B's squared logit error on logits centred per image, s − mean(s) against t − mean(t)
                   (softmax ignores a shift, so the student need not match the teacher's logit mean)
  layer-targets    phase A's loss at every rewritten layer, not only at each block's last: the mean over
                   layers of ‖s_l − t_l‖² / ‖t_l‖², block inputs still teacher-forced
  sam              phase B's steps sharpness-aware (SAM, Foret et al. 2021): the gradient taken at
                   w + ρ·g/‖g‖ (``--rho``), so a step costs two forwards and backwards

    python benchmarks/ablations.py relu-mid -- --plan benchmarks/plans/resnet20_x2.json --steps 2353 --threads 1 --no-speed
    python benchmarks/ablations.py phase-lr --phase-b-lr 1.5e-3 -- --plan benchmarks/plans/resnet20_x2.json --steps 2353
    python benchmarks/ablations.py native-coarse -- --plan benchmarks/plans/resnet20_x2.json --rows full \\
        --sources synthetic --gen-step-ratio 0.6 --count 1408 --steps 2337 --threads 1
    python benchmarks/ablations.py sam --rho 0.05 -- --plan benchmarks/plans/resnet20_x2.json --steps 2400 --threads 1
    python benchmarks/ablations.py precise-bn -- --plan benchmarks/plans/resnet20_x2.json --rows full \\
        --sources synthetic --count 1024 --threads 1 --cache /tmp/df
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F
from ablations_datafree import mirror_calib, native_coarse, precise_bn

import convslim.finetune.distill as distill
import convslim.finetune.loop as loop
import convslim.finetune.recipe as recipe
from convslim.convert.dwsep import DepthwiseSeparableConv

CALIBRATION_BATCHES = 4  # relu-mid: the batches whose minimum sets each depthwise output's shift


def _forward_with_mid_relu(self: DepthwiseSeparableConv, x: torch.Tensor) -> torch.Tensor:
    """``DepthwiseSeparableConv.forward`` (sum emission) with a ReLU on each depthwise response once shifted."""
    relu = getattr(self, "mid_relu", False)
    out = None
    for dw, pw in zip(self.depthwise, self.pointwise, strict=True):
        response = dw(x)
        y = pw(F.relu(response) if relu else response)
        out = y if out is None else out + y
    return out


@torch.no_grad()
def _depthwise_minima(student, calib, device) -> dict:
    """(module, branch) → each channel's minimum depthwise response over the first calibration batches."""
    modules = [m for m in student.modules() if isinstance(m, DepthwiseSeparableConv)]
    lows: dict = {}

    def hook(module, args):
        for t, dw in enumerate(module.depthwise):
            low = dw(args[0]).amin(dim=(0, 2, 3))
            key = (module, t)
            lows[key] = low if key not in lows else torch.minimum(lows[key], low)

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    was_training = student.training
    student.eval()
    for x, _ in calib[:CALIBRATION_BATCHES]:
        student(x.to(device))
    for h in handles:
        h.remove()
    student.train(was_training)
    return lows


@torch.no_grad()
def _shift_into_linear_region(student, calib, device) -> None:
    for (module, t), low in _depthwise_minima(student, calib, device).items():
        dw, pw = module.depthwise[t], module.pointwise[t]
        shift = (-low).clamp(min=0)
        if dw.bias is None:
            dw.bias = torch.nn.Parameter(torch.zeros_like(shift))
        if pw.bias is None:
            pw.bias = torch.nn.Parameter(torch.zeros(pw.out_channels, device=shift.device))
        dw.bias += shift
        pw.bias -= pw.weight[:, :, 0, 0] @ shift
        module.mid_relu = True


def relu_mid(args) -> None:
    DepthwiseSeparableConv.forward = _forward_with_mid_relu
    recalibrate = recipe.recalibrate_batchnorm

    def after_stage1(student, calib, device):  # the recipe calls it right after stage 1's refit
        _shift_into_linear_region(student, calib, device)
        return recalibrate(student, calib, device)

    recipe.recalibrate_batchnorm = after_stage1


def phase_lr(args) -> None:
    feature_phase, kd_phase = recipe.feature_phase, recipe.kd_phase

    def phase_a(teacher, phase, *rest, **kw):
        phase.settings = replace(phase.settings, lr=args.phase_a_lr or phase.settings.lr)
        return feature_phase(teacher, phase, *rest, **kw)

    def phase_b(teacher, phase, *rest, **kw):
        phase.settings = replace(phase.settings, lr=args.phase_b_lr or phase.settings.lr)
        return kd_phase(teacher, phase, *rest, **kw)

    recipe.feature_phase, recipe.kd_phase = phase_a, phase_b


def mirror_features(args) -> None:
    def feature_phase(teacher, phase, names, batches, log=None):
        groups = distill.blocks_of(names)
        forced, t_out, s_out = {}, {}, {}
        handles, student = [], phase.student
        for group in groups:
            first, last = group[0], group[-1]
            handles += [
                teacher.get_submodule(first).register_forward_pre_hook(distill._store_input(forced, first)),
                teacher.get_submodule(last).register_forward_hook(distill._store_output(t_out, last)),
                student.get_submodule(first).register_forward_pre_hook(distill._force_input(forced, first)),
                student.get_submodule(last).register_forward_hook(distill._store_output(s_out, last)),
            ]

        def loss_of(forward, batch):
            mirrored = log.mirrored(teacher, batch) if log is not None else None
            flipped_back = {k: v.flip(3) for k, v in t_out.items()} if mirrored is not None else {}
            with torch.no_grad():
                logits = teacher(batch.x)
            for key, value in flipped_back.items():
                t_out[key] = (t_out[key] + value) / 2
            if log is not None:
                log.record(batch, logits, mirrored)
            forward(batch.x)
            losses = (distill.relative_mse(s_out[g[-1]], t_out[g[-1]]) for g in groups)
            return sum(losses) / len(groups)

        with distill._hooks(handles):
            return distill.train(phase, batches, loss_of)

    recipe.feature_phase = feature_phase


def centred_mse(args) -> None:
    kd_loss = distill.kd_loss

    def centred(s, t, y, temperature, ce_weight, kind):
        if kind == "mse" and s.dim() == 2:
            s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
        return kd_loss(s, t, y, temperature, ce_weight, kind)

    distill.kd_loss = centred


def layer_targets(args) -> None:
    def feature_phase(teacher, phase, names, batches, log=None):
        forced, t_out, s_out = {}, {}, {}
        handles, student = [], phase.student
        for first in (g[0] for g in distill.blocks_of(names)):
            handles += [
                teacher.get_submodule(first).register_forward_pre_hook(distill._store_input(forced, first)),
                student.get_submodule(first).register_forward_pre_hook(distill._force_input(forced, first)),
            ]
        for n in names:
            handles += [
                teacher.get_submodule(n).register_forward_hook(distill._store_output(t_out, n)),
                student.get_submodule(n).register_forward_hook(distill._store_output(s_out, n)),
            ]

        def loss_of(forward, batch):
            distill.teacher_pass(teacher, batch, log)
            forward(batch.x)
            return sum(distill.relative_mse(s_out[n], t_out[n]) for n in names) / len(names)

        with distill._hooks(handles):
            return distill.train(phase, batches, loss_of)

    recipe.feature_phase = feature_phase


def sam(args) -> None:
    plain_step = loop._step

    def sharpness_aware_step(phase, optimizer, forward, batch, loss_of):
        if not phase.desc.startswith("stage 2b"):  # phase A's loss logs the teacher: one pass per step
            return plain_step(phase, optimizer, forward, batch, loss_of)
        phase.student.train()
        loss = loss_of(forward, batch)
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(phase.settings, phase.budget.progress())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            grads = [p.grad for p in phase.params]
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)).clamp_min(1e-12)
            moves = [None if g is None else g * (args.rho / norm) for g in grads]
            for p, move in zip(phase.params, moves, strict=True):
                if move is not None:
                    p.add_(move)
        optimizer.zero_grad(set_to_none=True)
        loss_of(forward, batch).backward()
        with torch.no_grad():
            for p, move in zip(phase.params, moves, strict=True):
                if move is not None:
                    p.sub_(move)
        optimizer.step()
        phase.budget.done += 1
        return float(loss.detach())

    loop._step = sharpness_aware_step


VARIANTS = {
    "relu-mid": (relu_mid, "bench_finetune"),
    "phase-lr": (phase_lr, "bench_finetune"),
    "mirror-features": (mirror_features, "bench_finetune"),
    "native-coarse": (native_coarse, "bench_datafree"),
    "precise-bn": (precise_bn, "bench_datafree"),
    "mirror-calib": (mirror_calib, "bench_datafree"),
    "centred-mse": (centred_mse, "bench_finetune"),
    "layer-targets": (layer_targets, "bench_finetune"),
    "sam": (sam, "bench_finetune"),
}


def main() -> None:
    ours, bench_args = (sys.argv[1:], []) if "--" not in sys.argv else _split(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument(
        "--phase-a-lr", type=float, help="phase-lr: phase A's one-cycle peak (default: --lr's)"
    )
    parser.add_argument(
        "--phase-b-lr", type=float, help="phase-lr: phase B's one-cycle peak (default: --lr's)"
    )
    parser.add_argument("--rho", type=float, default=0.05, help="sam: the radius ρ of the ascent step")
    args = parser.parse_args(ours)
    patch, bench = VARIANTS[args.variant]
    patch(args)
    print(f"[ablations] {args.variant}", flush=True)
    sys.argv = [f"{bench}.py", *bench_args]
    module = __import__(bench)
    module.main()


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


if __name__ == "__main__":
    main()
