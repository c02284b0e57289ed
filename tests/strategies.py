"""Hypothesis strategies the property tests share."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def image_batches(draw, max_batch: int = 5) -> tuple[torch.Tensor, torch.Generator]:
    """A small N×C×H×W float64 batch (values about 1 ± 3), channels-last or not, and the generator that drew
    it, seeded by hypothesis, for the test's further draws."""
    n, c, h, w = (draw(st.integers(1, top)) for top in (max_batch, 6, 5, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 3 + 1
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, gen
