"""The graph passes forms ask for by name: a form sets ``graph_pass = "octave_region"`` and ``rewrite`` runs that
pass here after the form's convs are swapped in. Forms never import passes (a pass may import a form's module:
the octave passes recognise its split/merge functions), so the dependency runs one way only.

A graph pass is ``pass(module, decisions, notes) -> (module, decisions as built)``: it may change the (copied)
model, must not change ``decisions`` (it returns new ones where the graph work fixed more of a setting), and
appends report notes. ``register_graph_pass`` adds one for a user's own form.

Example:
    >>> module, built = run_graph_pass("octave_region", module, decisions, notes)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx, nn

from convslim.core import LayerDecision
from convslim.core.registry import register
from convslim.errors import UsageError
from convslim.passes.octave import octave_region
from convslim.passes.permute import fold_permutations

GraphPass = Callable[[nn.Module, list[LayerDecision], list[str]], tuple[nn.Module, list[LayerDecision]]]


def _fold_permutations(module: nn.Module, decisions: list[LayerDecision], notes: list[str]):
    """Grouped: fold each regrouped layer's channel gathers into its neighbours (``passes.permute``)."""
    return fold_permutations(module, {d.name: d.setting for d in decisions}, notes), decisions


def _octave_region(module: nn.Module, decisions: list[LayerDecision], notes: list[str]):
    """Octave: the region form on a traced model (``passes.octave``); an untraced one keeps the wrappers."""
    if not isinstance(module, fx.GraphModule):
        notes.append("octave: per-conv wrapper form (the model was not traced, so no region form)")
        return module, decisions
    return octave_region(module, decisions, notes)


GRAPH_PASSES: dict[str, GraphPass] = {
    "fold_permutations": _fold_permutations,
    "octave_region": _octave_region,
}


def register_graph_pass(name: str, graph_pass: GraphPass, *, replace: bool = False) -> GraphPass:
    """Add ``graph_pass`` under ``name`` for forms to name. A name already taken is an error unless
    ``replace=True`` says the new pass is meant to take its place."""
    return register(GRAPH_PASSES, name, graph_pass, "graph pass", replace=replace)


def run_graph_pass(name: str, module: nn.Module, decisions: list[LayerDecision], notes: list[str]):
    """Run the pass ``name`` (what a form's ``graph_pass`` says); an unknown name is a usage error."""
    try:
        graph_pass = GRAPH_PASSES[name]
    except KeyError:
        known = ", ".join(sorted(GRAPH_PASSES))
        raise UsageError(
            f"graph pass {name!r} is not registered (known: {known}); register it with "
            "convslim.passes.register_graph_pass or set the form's graph_pass to one of these"
        ) from None
    return graph_pass(module, decisions, notes)
