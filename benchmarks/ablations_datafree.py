"""The data-free variants of ``ablations.py`` (issue 28's table), each a patch of one library function in this
process only; run them through ``ablations.py``:

  native-coarse    synthesis's coarse steps feed the model the half-resolution image itself (DeepInversion's
                   multi-resolution) instead of its bilinear upsampling; then x ← U(x) is refined at full size
  precise-bn       the training BatchNorms' running statistics re-estimated (cumulative averages) on the training
                   pool itself, unmixed and unaugmented, just before they are folded; the val5k top-1 of the
                   weights folded as trained (statistics of the training views) is printed first
  mirror-calib     stage 1's calibration batches followed each by its mirror image (twice the images to fit)
"""

from __future__ import annotations

import copy

import torch

import convslim.finetune.recipe as recipe
import convslim.inputs.synthetic as synthetic
from convslim.finetune.reconstruct import recalibrate_batchnorm


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
