"""Verification with ONNX Runtime: parity (ONNX vs PyTorch, compressed vs original). Sessions, timing and
export live in ``convslim.runtime``; latency is measured there (``convslim.runtime.measure``).

Example:
    >>> onnx_parity("model.onnx", compressed, [x])["max_abs_err"] < 1e-4
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convslim.runtime.sessions import open_session, run

DEFAULT_RTOL = 1e-4


def make_session(path: str | Path, provider: str = "CPUExecutionProvider"):
    return open_session(path, [provider])


def run_session(session, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    return run(session, inputs)[0]


@torch.no_grad()
def _torch_output(model: nn.Module, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    out = model(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.detach().float().cpu().numpy()


def onnx_parity(
    onnx_path: str | Path,
    model: nn.Module,
    batches: list[tuple],
    rtol: float = DEFAULT_RTOL,
    provider: str = "CPUExecutionProvider",
) -> dict:
    """Max |ONNX − PyTorch| over ``batches``; passes when it is at most ``rtol`` × max |PyTorch output|."""
    session = make_session(onnx_path, provider)
    max_err, scale = 0.0, 0.0
    for inputs in batches:
        ref = _torch_output(model, inputs)
        got = run_session(session, inputs)
        max_err = max(max_err, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    tolerance = rtol * max(scale, 1e-12)
    return {
        "max_abs_err": max_err,
        "output_scale": scale,
        "rtol": rtol,
        "tolerance": tolerance,
        "passed": max_err <= tolerance,
        "n_batches": len(batches),
        "provider": provider,
    }


def compare_models(original: nn.Module, compressed: nn.Module, batches: list[tuple]) -> dict:
    """How far the compressed model's outputs are from the original's: relative L2, cosine, top-1 agreement."""
    ref = np.concatenate([_torch_output(original, b) for b in batches]).astype(np.float64)
    got = np.concatenate([_torch_output(compressed, b) for b in batches]).astype(np.float64)
    diff = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    cosine = float((got * ref).sum() / max(np.linalg.norm(got) * np.linalg.norm(ref), 1e-30))
    result = {"rel_l2": float(diff), "cosine": cosine, "top1_agreement": None, "n_samples": int(ref.shape[0])}
    if ref.ndim == 2 and ref.shape[1] > 1:
        result["top1_agreement"] = float((ref.argmax(1) == got.argmax(1)).mean())
    return result
