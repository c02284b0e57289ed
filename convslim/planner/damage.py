"""Damage: how far the whole model's output moves when only one layer takes one candidate.

Method. Run the BN-folded model once on the probe inputs (calibration data when ``prepare`` got some, else a
fixed batch of random inputs shaped like the example) to get the reference output y. For each candidate, swap
the replacement into the model in place (GraphModules call submodules by attribute, so a swap needs no
recompile), run again, and record ‖y' − y‖ / ‖y‖; then put the original conv back.

With calibration data (``refit=True``), each replacement first gets the cheap per-layer reconstruction that
fine-tuning's stage 1 will give it: where it ends in linear 1x1 heads (dwsep's pointwise part, grouped
``--mix``), the heads are refitted by ridge least squares so that it reproduces the original layer's output on
that layer's probe inputs (the inputs come from the reference run, so the fit costs one solve per candidate).
This matters: a rank-1 SVD initialisation is so far off (layer output error ≈ 1 on ResNet-20) that its
whole-model damage mostly measures the output's *norm* (a small wrong output behaves like skipping the block),
which ranks rank 2 below rank 1 on some layers; after the refit, damage falls with rank as it should. Forms
without linear heads (spatial, plain grouped, octave) are measured as initialised: gradient refits would
multiply planning time.

Example:
    >>> probe = probe_inputs(prepared, calibration=None)
    >>> measure_damage(prepared.traced.module, candidates, probe)
    >>> candidates[0].measured["damage"]
"""

from __future__ import annotations

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from convslim.core import set_submodule
from convslim.core.seeded import generator, inputs_like
from convslim.errors import ConvslimError
from convslim.finetune.affine import linear_heads
from convslim.finetune.reconstruct import fit_heads

PROBE_SAMPLES = 32


def probe_inputs(example_inputs: tuple, calibration: torch.Tensor | None = None) -> tuple:
    """Calibration data when given (first ``PROBE_SAMPLES``), else seeded random inputs of the example's shape."""
    if calibration is not None:
        return (calibration[:PROBE_SAMPLES],)
    return inputs_like(example_inputs, PROBE_SAMPLES, generator(1234))


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _SuffixRunner:
    """Re-runs only what a layer's change can reach: the original run's values of every other node are kept
    (``fx.Interpreter``'s ``initial_env``), so a late layer costs a short tail instead of a whole forward."""

    def __init__(self, gm: fx.GraphModule, probe: tuple):
        self.gm, self.probe = gm, probe
        interpreter = fx.Interpreter(gm, garbage_collect_values=False)
        self.reference = interpreter.run(*probe)
        self.env = interpreter.env

    def run(self, layer: str):
        reached: set[fx.Node] = set()
        for node in self.gm.graph.nodes:  # topological order: users come after their inputs
            if (node.op == "call_module" and node.target == layer) or any(
                a in reached for a in node.all_input_nodes
            ):
                reached.add(node)
        keep = {n: v for n, v in self.env.items() if n not in reached}
        return fx.Interpreter(self.gm).run(*self.probe, initial_env=keep)

    def layer_pair(self, layer: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's input and output in the reference run (first call), or None if it is not a plain call."""
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and node.target == layer:
                source = node.args[0] if node.args else None
                if isinstance(source, fx.Node) and isinstance(self.env.get(source), torch.Tensor):
                    return self.env[source], self.env[node]
                return None
        return None


@torch.no_grad()
def measure_damage(
    module: nn.Module, candidates: list, probe: tuple, progress: bool = False, refit: bool = False
) -> None:
    """Set ``candidate.measured["damage"]`` (relative L2 of the model output) for each candidate, in place;
    ``refit``: least-squares refit of linear heads first (see module docstring)."""
    module.eval()
    runner = None
    if isinstance(module, fx.GraphModule):
        runner = _SuffixRunner(module, probe)
        reference, forward = _first(runner.reference).double(), runner.run
    else:
        reference, forward = _first(module(*probe)).double(), lambda _layer: module(*probe)
    scale = reference.norm().clamp_min(1e-30)
    modules = dict(module.named_modules())
    for cand in tqdm(candidates, desc="measuring damage", disable=not progress, leave=False):
        if "error" in cand.measured:
            continue
        conv = modules[cand.layer]
        try:
            replacement = cand.build(conv)
        except ConvslimError as exc:  # a typed refusal; any other exception is a bug in the form and surfaces
            cand.measured["error"] = f"convert failed: {str(exc)[:120]}"
            continue
        if refit and runner is not None:
            cand.measured["refit"] = _refit(replacement, runner.layer_pair(cand.layer))
        set_submodule(module, cand.layer, replacement)
        try:
            out = _first(forward(cand.layer)).double()
            cand.measured["damage"] = float((out - reference).norm() / scale)
        except RuntimeError as exc:  # torch's shape/dtype errors: a replacement that cannot run in place
            cand.measured["error"] = f"forward failed: {str(exc)[:120]}"
        finally:
            set_submodule(module, cand.layer, conv)


def _refit(replacement: nn.Module, pair) -> bool:
    """Least-squares refit of ``replacement``'s linear heads to the original layer's output; True if done."""
    if pair is None:
        return False
    x, y = pair
    heads = linear_heads(replacement, x[:2])
    if not heads:
        return False
    fit_heads(replacement, heads, [(x, y)])
    return True
