"""Recipe variants that were measured and not built (README, issue 25's and issue 28's tables), kept runnable so
that their RESULTS rows can be reproduced. Each variant patches one library function in this process only, then
runs ``bench_finetune.py`` (or ``bench_datafree.py``) with the arguments after ``--``.

Variants:
  relu-mid         a ReLU between each dwsep layer's depthwise and pointwise parts, started in its linear region:
                   after stage 1, each depthwise filter's bias is raised by the negative of its output's minimum
                   over four calibration batches, b_D ← b_D + s, and each pointwise bias lowered to match,
                   b_P ← b_P − P·s, so the model computes what it did and stage 2 may bend it (ORT fuses
                   Conv + Relu, so it would cost nothing deployed)
  phase-lr         phase A and phase B with their own one-cycle peaks (``--phase-a-lr``, ``--phase-b-lr``)
  mirror-features  phase A's block targets averaged with the teacher's block outputs on the mirror image, flipped
                   back: t ← (t(x) + flip(t(flip(x)))) / 2, the flip TTA the logged logits get (no extra forward)
  native-coarse    synthesis's coarse steps feed the model the half-resolution image itself (DeepInversion's
                   multi-resolution) instead of its bilinear upsampling; then x ← U(x) is refined at full size
  precise-bn       the training BatchNorms' running statistics re-estimated (cumulative averages) on the training
                   pool itself, unmixed and unaugmented, just before they are folded; the val5k top-1 of the
                   weights folded as trained (statistics of the training views) is printed first
  mirror-calib     stage 1's calibration batches followed each by its mirror image (twice the images to fit)

    python benchmarks/ablations.py relu-mid -- --plan benchmarks/plans/resnet20_x2.json --steps 2353 --threads 1 --no-speed
    python benchmarks/ablations.py phase-lr --phase-b-lr 1.5e-3 -- --plan benchmarks/plans/resnet20_x2.json --steps 2353
    python benchmarks/ablations.py native-coarse -- --plan benchmarks/plans/resnet20_x2.json --rows full \\
        --sources synthetic --gen-step-ratio 0.6 --count 1408 --steps 2337 --threads 1
    python benchmarks/ablations.py precise-bn -- --plan benchmarks/plans/resnet20_x2.json --rows full \\
        --sources synthetic --count 1024 --threads 1 --cache /tmp/df
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

import convslim.finetune.distill as distill
import convslim.finetune.recipe as recipe
import convslim.inputs.synthetic as synthetic
from convslim.convert.dwsep import DepthwiseSeparableConv
from convslim.finetune.reconstruct import recalibrate_batchnorm

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


def native_coarse(args) -> None:
    upsampled, leaf = synthetic._upsampled, synthetic._leaf

    def leaf_at_switch(x, box, lr):
        if x.requires_grad:  # the coarse leaf at the switch to fine (the first call gets fresh noise)
            x = upsampled(x, (x.shape[1], 2 * x.shape[-2], 2 * x.shape[-1]))
        return leaf(x, box, lr)

    synthetic._upsampled = lambda x, shape: x  # the model sees the half-resolution image itself
    synthetic._leaf = leaf_at_switch


def precise_bn(args) -> None:
    from common import cifar_arrays, top1

    pool, batches, unwrap = {}, recipe.training_batches, recipe.unwrap_all

    def training_batches(train, *rest):
        pool["x"] = train.x  # the pool stage 2 trains on, before augmentation and mixup
        return batches(train, *rest)

    @torch.no_grad()
    def unwrap_all(model, names):
        if names and "x" in pool:
            as_trained = copy.deepcopy(model)
            unwrap(as_trained, names)
            print(f"[precise-bn] as trained: val5k top-1 {top1(as_trained, *cifar_arrays('val5k')):.4f}")
            x, device = pool["x"], next(model.parameters()).device
            batches = [
                (x[i : i + 128].contiguous(memory_format=torch.channels_last), None)
                for i in range(0, len(x), 128)
            ]
            count = recalibrate_batchnorm(model, batches, device)
            print(f"[precise-bn] {count} BatchNorms re-estimated on {len(x)} images", flush=True)
        return unwrap(model, names)

    recipe.training_batches, recipe.unwrap_all = training_batches, unwrap_all


def mirror_calib(args) -> None:
    take = recipe.take

    def with_mirrors(*a, **k):
        return [pair for x, y in take(*a, **k) for pair in ((x, y), (x.flip(3), y))]

    recipe.take = with_mirrors


VARIANTS = {
    "relu-mid": (relu_mid, "bench_finetune"),
    "phase-lr": (phase_lr, "bench_finetune"),
    "mirror-features": (mirror_features, "bench_finetune"),
    "native-coarse": (native_coarse, "bench_datafree"),
    "precise-bn": (precise_bn, "bench_datafree"),
    "mirror-calib": (mirror_calib, "bench_datafree"),
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
