"""Seeded random inputs: the one place convslim draws the inputs it times, probes and checks parity on, so the same
model always sees the same numbers.

Example:
    >>> x = normal((32, 3, 32, 32))                          # N(0, 1), seed 0
    >>> batches = inputs_like((torch.randn(1, 3, 32, 32),), 4)  # shaped like the example, batch 4
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(shape: Sequence[int], gen: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
    """N(0, 1) of ``shape`` from ``gen`` (default: a fresh one seeded 0)."""
    return torch.randn(tuple(shape), generator=gen if gen is not None else generator(), dtype=dtype)


def inputs_like(
    example_inputs: Sequence[torch.Tensor],
    batch: int,
    gen: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, ...]:
    """Every floating-point example input redrawn as N(0, 1) at ``batch`` (in ``dtype``, default its own); other
    inputs (integer ids, masks) as given. Successive calls with one ``gen`` continue its stream."""
    gen = gen if gen is not None else generator()
    return tuple(
        normal((batch, *t.shape[1:]), gen, dtype or t.dtype) if t.is_floating_point() else t
        for t in example_inputs
    )
