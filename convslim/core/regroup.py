r"""The contract between a form whose layers gather channels and the pass that folds those gathers away.

A regroupable layer computes y = G(x[:, p_in])[:, p_out⁻¹] for channel orders it chose itself (``grouped``
does). ``convslim.passes.permute.fold_permutations`` only moves those orders around: it asks the layer for
its orders, asks it to rebuild itself with an order pinned or a gather dropped, and permutes the plain convs
next to it. Any form whose replacement subclasses ``Regroupable`` gets the folding for free.

Example:
    >>> in_perm, out_perm = layer.channel_orders()          # out_perm None: output already in original order
    >>> new = layer.regroup(setting, fixed_in=in_perm, fixed_out=None, gather_in=False, gather_out=True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Regroupable(nn.Module):
    """Base class of a layer whose channel gathers ``fold_permutations`` may fold into its neighbours."""

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    def channel_orders(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(p_in, p_out): the input order the layer reads in, and the order its output leaves in before the
        output gather (None when the output is already in the original order, e.g. after a 1x1 mix)."""
        raise NotImplementedError

    def output_conv(self) -> nn.Conv2d | None:
        """A plain conv producing this layer's output whose output channels may be permuted for free, or None."""
        return None

    def regroup(
        self,
        setting: dict[str, Any],
        *,
        fixed_in: torch.Tensor | None,
        fixed_out: torch.Tensor | None,
        gather_in: bool,
        gather_out: bool,
    ) -> Regroupable:
        """A new layer for the same dense conv with the given orders pinned (None: free to choose) and only
        the gathers asked for. The layer itself is left unchanged."""
        raise NotImplementedError

    def release_source(self) -> None:
        """Drop whatever ``regroup`` needed (the dense conv); called once the pass is done."""
