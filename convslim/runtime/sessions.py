"""ONNX Runtime sessions with one set of options everywhere (verify, planner, benchmarks), and running them.

Example:
    >>> session = open_session("model.onnx", ["CPUExecutionProvider"])
    >>> outputs = run(session, [np.zeros((1, 3, 32, 32), np.float32)])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The one set of options; ``threads``: ORT's intra-op threads (None: its default, one per core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def open_session(
    model: str | Path | bytes, providers: Sequence[str], threads: int | None = None
) -> ort.InferenceSession:
    """A session on an ONNX file or its bytes (bytes: nothing touches the disk) with ``threads`` intra-op
    threads (None: ORT's default)."""
    source = model if isinstance(model, bytes) else str(model)
    options = session_options(threads)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


def feeds(session: ort.InferenceSession, inputs: Sequence) -> dict[str, np.ndarray]:
    """``inputs`` (tensors or arrays, in order) under the session's input names: exporters name them differently."""
    arrays = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x for x in inputs]
    return {i.name: a for i, a in zip(session.get_inputs(), arrays, strict=False)}


def run(session: ort.InferenceSession, inputs: Sequence) -> list[np.ndarray]:
    """Every output of one run."""
    return session.run(None, feeds(session, inputs))


def run_batched(session: ort.InferenceSession, x: torch.Tensor, batch: int) -> np.ndarray:
    """The first output over ``x`` in chunks of ``batch``; a model with a fixed batch gets only full chunks."""
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    stop = len(x) - len(x) % step if isinstance(fixed, int) else len(x)
    outputs = [run(session, [x[i : i + step]])[0] for i in range(0, stop, step)]
    return np.concatenate(outputs) if outputs else np.zeros((0,))
