"""The working copy of a model (``TracedModel``) and what every room receives after ``prepare`` (``Prepared``).

Example:
    >>> prepared = convslim.prepare(model, torch.randn(1, 3, 32, 32))
    >>> prepared.traced.mode, [s.name for s in prepared.sites][:2]
    ('fx', ['conv1', 'layer1.0.conv1'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from convslim.core.sites import ConvSite


@dataclass
class TracedModel:
    """The working copy of a model: an FX GraphModule (``mode='fx'``) or a plain module copy (``'module-swap'``)."""

    module: nn.Module
    example_inputs: tuple
    mode: str
    notes: list[str] = field(default_factory=list)
    unconvertible: dict[str, str] = field(default_factory=dict)  # functional convs: node name -> reason

    @property
    def graph_module(self) -> fx.GraphModule:
        if not isinstance(self.module, fx.GraphModule):
            raise TypeError("this model was not traced; it has no graph")
        return self.module


@dataclass
class Prepared:
    """A model ready to plan on: the eval-mode original, its BN-folded working copy, and its conv sites."""

    original: nn.Module
    traced: TracedModel
    sites: list[ConvSite]
    batchnorm_folded: int

    @property
    def example_inputs(self) -> tuple:
        return self.traced.example_inputs
