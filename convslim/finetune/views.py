"""The augmented views the fine-tune trains on: random crop + flip with explicit parameters, and mixup.

Crop + flip (for image batches N×C×H×W with H, W ≥ 16): zero-pad by 4, crop back at offset (dy, dx) per
sample, flip left-right with probability ½ (the CIFAR recipe; matters with ~10k images). The parameters are
drawn apart from their application (``draw_crops`` / ``apply_crops``) so that a view can be rebuilt exactly
from its sample index and its three small numbers: the teacher's output on it can then be replayed
(``replay``) instead of computed again.

Example:
    >>> crops = draw_crops(x, torch.Generator().manual_seed(0))
    >>> view = apply_crops(x, crops)            # the same as augment(x, same generator)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PAD = 4


@dataclass
class Crops:
    """Per-sample crop offsets in [0, 2·PAD], flips, and cutout: the erased square's centre (``ey``, ``ex``)
    and side (``side``, 0: nothing erased); None for inputs that are not augmented."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    ey: torch.Tensor
    ex: torch.Tensor
    side: torch.Tensor

    def __getitem__(self, index) -> Crops:
        return Crops(*(getattr(self, k)[index] for k in FIELDS))

    @staticmethod
    def cat(parts: list[Crops]) -> Crops:
        return Crops(*(torch.cat([getattr(p, k) for p in parts]) for k in FIELDS))


FIELDS = ("dy", "dx", "flip", "ey", "ex", "side")


def augmentable(x: torch.Tensor) -> bool:
    return x.dim() == 4 and min(x.shape[-2:]) >= 16


def draw_crops(x: torch.Tensor, generator: torch.Generator, cutout: int = 0) -> Crops | None:
    """One crop offset and flip per sample of ``x``, and with ``cutout`` > 0 the centre of a ``cutout``-sided
    square to erase (DeVries & Taylor 2017); None when ``x`` is not an augmentable image batch."""
    if not augmentable(x):
        return None
    n, h, w = len(x), x.shape[-2], x.shape[-1]
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, dtype=torch.int8)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator, dtype=torch.int8)
    flip = torch.rand(n, generator=generator) < 0.5
    side = torch.full((n,), min(cutout, h, w), dtype=torch.int16)
    if cutout > 0:  # drawn only when asked, so the other draws stay those of runs without cutout
        ey = torch.randint(0, h, (n,), generator=generator, dtype=torch.int16)
        ex = torch.randint(0, w, (n,), generator=generator, dtype=torch.int16)
    else:
        ey = ex = torch.zeros(n, dtype=torch.int16)
    return Crops(dy, dx, flip, ey, ex, side)


def apply_crops(x: torch.Tensor, crops: Crops | None) -> torch.Tensor:
    """``x`` zero-padded by PAD, cropped back at each sample's offset and flipped where asked."""
    if crops is None:
        return x
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    dy, dx = crops.dy.long(), crops.dx.long()
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, c, h, w + 2 * PAD)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, c, h, w)
    out = out.gather(3, cols)
    out = torch.where(crops.flip.view(n, 1, 1, 1), out.flip(3), out)
    return _erase(out, crops) if bool((crops.side > 0).any()) else out


def _erase(x: torch.Tensor, crops: Crops) -> torch.Tensor:
    """Zero (the normalised mean) rows [ey − side/2, ey + side/2) × the same columns around ex, clipped."""
    n, _, h, w = x.shape
    half = (crops.side // 2).long().view(n, 1)
    ey, ex, side = crops.ey.long().view(n, 1), crops.ex.long().view(n, 1), crops.side.long().view(n, 1)
    rows = torch.arange(h).view(1, h)
    cols = torch.arange(w).view(1, w)
    in_rows = (rows >= ey - half) & (rows < ey - half + side)
    in_cols = (cols >= ex - half) & (cols < ex - half + side)
    erased = (in_rows[:, :, None] & in_cols[:, None, :]).view(n, 1, h, w)
    return x.masked_fill(erased, 0.0)


def augment(x: torch.Tensor, generator: torch.Generator, cutout: int = 0) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip (+ cutout), per sample; other inputs pass through."""
    return apply_crops(x, draw_crops(x, generator, cutout))


def mixup(x: torch.Tensor, generator: torch.Generator, alpha: float) -> torch.Tensor:
    """Function matching's input (Beyer et al. 2022): each sample blended with another of the batch,
    ``λ·x + (1−λ)·x[perm]`` with one λ ~ Beta(α, α) per sample. Teacher and student see the same mixed image,
    and the teacher's output on it is the target, so no label is needed (the caller drops them)."""
    if alpha <= 0 or len(x) < 2:
        return x
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    # Beta.sample has no generator argument: draw its seed from ours so runs stay reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        lam = beta.sample((len(x),))
    perm = torch.randperm(len(x), generator=generator)
    lam = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return lam * x + (1 - lam) * x[perm]
