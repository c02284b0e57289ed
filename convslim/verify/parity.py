"""Verification with ONNX Runtime: parity (ONNX vs PyTorch, compressed vs original). Sessions, timing and
export live in ``convslim.runtime``; latency is measured there (``convslim.runtime.measure``).

Example:
    >>> onnx_parity("model.onnx", compressed, [x])["max_abs_err"] < 1e-4
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convslim.errors import UsageError
from convslim.runtime.sessions import open_session, run

DEFAULT_RTOL = 1e-4
# The compressed model may differ from PyTorch by up to this multiple of the original's own ONNX-vs-PyTorch error:
# a rewrite adds a few ops of the same kinds, so its float32 noise is of the same order, not zero.
FLOOR_MULTIPLE = 4.0


def make_session(path: str | Path, provider: str = "CPUExecutionProvider"):
    return open_session(path, [provider])


def run_session(session, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Every output of the session, in the exporter's order (the flattened order of ``named_outputs``)."""
    return run(session, inputs)


def named_outputs(out, name: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's output, flattened in pytree order (as the ONNX exporter orders its outputs) and
    named by its path: ``output``, ``output[0]``, ``output['logits']``. Other values (None, ints) are skipped."""
    if isinstance(out, torch.Tensor):
        return [(name, out)]
    if isinstance(out, dict):
        items = [(f"{name}[{k!r}]", v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(f"{name}[{i}]", v) for i, v in enumerate(out)]
    else:
        return []
    return [pair for key, value in items for pair in named_outputs(value, key)]


@torch.no_grad()
def _torch_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    named = named_outputs(model(*inputs))
    if not named:
        raise UsageError("the model's output holds no tensor; convslim compares tensor outputs")
    return [(key, t.detach().float().cpu().numpy()) for key, t in named]


def onnx_parity(
    onnx_path: str | Path,
    model: nn.Module,
    batches: list[tuple],
    rtol: float = DEFAULT_RTOL,
    provider: str = "CPUExecutionProvider",
) -> dict:
    """Max |ONNX − PyTorch| over ``batches`` for every tensor output; each passes when it is at most ``rtol`` ×
    its own max |PyTorch output|. ``outputs`` lists them by name; the top-level numbers are the worst one's."""
    session = make_session(onnx_path, provider)
    errors: dict[str, list[float]] = {}  # name -> [max abs err, scale]
    for inputs in batches:
        ref = _torch_outputs(model, inputs)
        got = run_session(session, inputs)
        for (key, r), g in zip(ref, got, strict=True):
            err, scale = errors.setdefault(key, [0.0, 0.0])
            errors[key] = [worst_of(err, np.abs(g - r)), worst_of(scale, np.abs(r))]
    outputs = [
        {
            "name": key,
            "max_abs_err": err,
            "output_scale": scale,
            "tolerance": rtol * max(scale, 1e-12),
            "passed": _within(err, rtol * max(scale, 1e-12)),
        }
        for key, (err, scale) in errors.items()
    ]
    worst = max(outputs, key=_badness)  # tolerance may be 0
    return {
        "max_abs_err": worst["max_abs_err"],
        "output_scale": worst["output_scale"],
        "rtol": rtol,
        "tolerance": worst["tolerance"],
        "passed": all(o["passed"] for o in outputs),
        "n_batches": len(batches),
        "provider": provider,
        "outputs": outputs,
    }


def worst_of(so_far: float, values: np.ndarray) -> float:
    """max(``so_far``, max ``values``), NaN as soon as either holds one: Python's ``max`` drops a NaN (every
    comparison with it is false), which once let a NaN model pass with "max abs err 0"."""
    found = float(values.max()) if values.size else 0.0
    return float("nan") if math.isnan(so_far) or math.isnan(found) else max(so_far, found)


def _within(err: float, allowed: float) -> bool:
    """``err <= allowed`` for finite numbers only: NaN or infinity never passes a check."""
    return math.isfinite(err) and err <= allowed


def _badness(output: dict) -> float:
    ratio = output["max_abs_err"] / max(output["output_scale"], 1e-12)
    return ratio if math.isfinite(ratio) else float("inf")


def judge_with_floor(parity: dict, floor: dict, multiple: float = FLOOR_MULTIPLE) -> dict:
    """``parity`` (compressed ONNX vs PyTorch) judged against max(tolerance, ``multiple`` × the original model's
    own ONNX-vs-PyTorch error on the same inputs, ``floor``), output by output: runtime noise the original shows
    is not the rewrite's fault. Both numbers are kept; ``passed_tolerance`` says whether the tolerance alone held."""
    floors = {o["name"]: o["max_abs_err"] for o in floor.get("outputs", [])}
    outputs = []
    for o in parity.get("outputs", []):
        allowed = max(o["tolerance"], multiple * floors.get(o["name"], floor["max_abs_err"]))
        outputs.append(dict(o, allowed_err=allowed, passed=_within(o["max_abs_err"], allowed)))
    allowed = max(parity["tolerance"], multiple * floor["max_abs_err"])
    passed = all(o["passed"] for o in outputs) if outputs else _within(parity["max_abs_err"], allowed)
    judged = dict(
        parity,
        floor_max_abs_err=floor["max_abs_err"],
        floor_multiple=multiple,
        allowed_err=allowed,
        passed_tolerance=parity["passed"],
        passed=passed,
    )
    if outputs:
        judged["outputs"] = outputs
    return judged


def compare_models(original: nn.Module, compressed: nn.Module, batches: list[tuple]) -> dict:
    """How far the compressed model's outputs are from the original's: relative L2, cosine and top-1 agreement
    for every tensor output (``outputs``); the top-level numbers are the worst over the outputs."""
    refs = [_torch_outputs(original, b) for b in batches]
    gots = [_torch_outputs(compressed, b) for b in batches]
    outputs = []
    for i, (key, _) in enumerate(refs[0]):
        ref = np.concatenate([r[i][1] for r in refs]).astype(np.float64)
        got = np.concatenate([g[i][1] for g in gots]).astype(np.float64)
        outputs.append({"name": key, **_closeness(ref, got)})
    agreements = [o["top1_agreement"] for o in outputs if o["top1_agreement"] is not None]
    finite = all(o["finite"] for o in outputs)
    return {
        "rel_l2": max(o["rel_l2"] for o in outputs) if finite else float("nan"),
        "cosine": min(o["cosine"] for o in outputs) if finite else float("nan"),
        "top1_agreement": min(agreements) if agreements else None,
        "n_samples": outputs[0]["n_samples"],
        "finite": finite,
        "outputs": outputs,
    }


def _closeness(ref: np.ndarray, got: np.ndarray) -> dict:
    """Relative L2, cosine and top-1 agreement of ``got`` against ``ref``; ``finite`` False (and no agreement)
    when either holds NaN or ±inf: an argmax over NaN agrees by accident."""
    finite = bool(np.isfinite(ref).all() and np.isfinite(got).all())
    diff = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    cosine = float((got * ref).sum() / max(np.linalg.norm(got) * np.linalg.norm(ref), 1e-30))
    result = {"rel_l2": float(diff), "cosine": cosine, "top1_agreement": None, "n_samples": int(ref.shape[0])}
    result["finite"] = finite
    if not finite:
        result.update(rel_l2=float("nan"), cosine=float("nan"))
    elif ref.ndim == 2 and ref.shape[1] > 1:
        result["top1_agreement"] = float((ref.argmax(1) == got.argmax(1)).mean())
    return result
