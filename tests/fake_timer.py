"""A deterministic stand-in for the wall clock ``convslim.runtime.timing`` times models with.

A run of a session "takes" a time computed from its ONNX graph, scaled by the batch it is fed: every node costs
a fixed overhead and its output size, a Conv / Gemm / MatMul its multiply-accumulates (int8 ones, whose weight
comes from a DequantizeLinear, at half the cost). So a cheaper form times faster, int8 beats fp32 where compute
dominates and loses on tiny layers (its Quantize/Dequantize nodes), and nothing depends on the machine's load:
planning, sweeping and auto-planning tests assert their real outcome. Sessions are never run.

Example (tests/conftest.py):
    >>> def test_plan(fake_timer): plan = plan_to_budget(prepared, "dwsep", target_speedup=1.5)
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

# about 1000x a real CPU's times: the clock is free to read, and slow fake runs keep the timing loops to their
# minimum number of runs (a block ends after one run), so the fake costs almost no wall time
NODE_S = 2e-3  # per node and run
ELEMENT_S = 1e-7  # per output element, per sample
MAC_S = 1e-6  # per multiply-accumulate, per sample (fp32)
INT8_MAC_S = 0.5 * MAC_S


class FakeClock:
    """``now()`` advances only when ``run`` "runs" a session, by that session's cost at the fed batch."""

    def __init__(self):
        self.time = 0.0
        self.runs = 0
        self._costs: dict[int, tuple] = {}  # id(session) → (session, its cost): computed once per session

    def now(self) -> float:
        return self.time

    def run(self, session, fed: dict) -> None:
        batch = next((a.shape[0] for a in fed.values() if getattr(a, "ndim", 0)), 1)
        known = self._costs.get(id(session))
        if known is None or known[0] is not session:
            known = self._costs[id(session)] = (session, model_cost(_model_bytes(session)))
        per_run, per_sample = known[1]
        self.time += per_run + per_sample * batch
        self.runs += 1


def _model_bytes(session) -> bytes:
    if getattr(session, "_model_bytes", None) is not None:
        return session._model_bytes
    return Path(session._model_path).read_bytes()


def model_cost(data: bytes) -> tuple[float, float]:
    """(seconds per run, seconds per sample) of the model whose bytes are ``data``."""
    return _cost(hashlib.sha256(data).hexdigest(), data)


@lru_cache(maxsize=512)
def _cost(digest: str, data: bytes) -> tuple[float, float]:
    model = shape_inference.infer_shapes(onnx.load_from_string(data))
    graph = model.graph
    shapes = {v.name: _dims(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    shapes.update({i.name: list(numpy_helper.to_array(i).shape) for i in graph.initializer})
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    per_sample = 0.0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        elements = float(np.prod(out[1:])) if out and None not in out[1:] else 0.0
        per_sample += elements * ELEMENT_S
        if node.op_type in ("Conv", "Gemm", "MatMul") and elements:
            macs = elements * _reduced(node, shapes.get(node.input[1]))
            per_sample += macs * (INT8_MAC_S if node.input[1] in dequantized else MAC_S)
    return NODE_S * len(graph.node), per_sample


def _reduced(node, weight: list | None) -> float:
    """Multiply-accumulates per output element: Cin/groups × Kh × Kw for a Conv, K for a Gemm / MatMul."""
    if not weight or None in weight:
        return 1.0
    if node.op_type == "Conv":
        return float(np.prod(weight[1:]))
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return float(weight[-1] if trans_b else weight[0])


def _dims(value) -> list[int | None]:
    """The tensor's shape, None for an axis shape inference left symbolic (the batch)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
