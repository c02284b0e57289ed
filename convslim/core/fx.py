"""Module-tree helpers shared by every pass: set, swap or delete a submodule by its dotted name.

Example:
    >>> old = set_submodule(model, "layer1.0.conv1", nn.Identity())   # returns the module it replaced
    >>> parent_of(model, "layer1.0.conv1")
    (BasicBlock(...), 'conv1')
"""

from __future__ import annotations

from torch import nn


def parent_of(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    """The module that holds ``target`` (``"a.b.c"`` → module ``a.b``) and the attribute name there (``"c"``)."""
    parent_name, _, child = target.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def set_submodule(root: nn.Module, target: str, new: nn.Module) -> nn.Module | None:
    """In place: put ``new`` at the dotted path ``target`` of ``root``; returns what was there (or None)."""
    parent, child = parent_of(root, target)
    old = getattr(parent, child, None)
    setattr(parent, child, new)
    return old


def delete_submodule(root: nn.Module, target: str) -> None:
    parent, child = parent_of(root, target)
    delattr(parent, child)
