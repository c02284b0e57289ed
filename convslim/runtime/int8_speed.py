"""Which nodes int8 makes slower on this CPU: each Conv of the model, cut out alone (``onnx.utils.Extractor``),
timed in fp32 and in int8 (quantized like the model) at the deployment batch in alternating blocks. A node whose
int8 micro-model takes more than ``SLOWER`` × its fp32 time (with both timings steady) stays in fp32.

Why per node and measured: int8 depthwise convs ran no faster than fp32 on an AVX2 CPU without VNNI, while dense
convs sped up; what int8 does to each layer depends on the CPU and ORT version, so it is timed, never assumed.
Identical convs (same attributes, weight shape and input shape) are timed once for as long as the ``NodeSpeeds``
passed in lives (a ``DeploySettings`` holds one for its run: the planner's rounds and the final deployment share
it).

Example:
    >>> slower_nodes(Path("pre.onnx"), {"reduce_range": True, ...}, batch=32, speeds=NodeSpeeds())
    {'node_conv2d_3': 'int8 measured 1.31x the fp32 time of this node alone (batch 32)'}
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnx
from onnx.utils import Extractor

from convslim.core.seeded import normal
from convslim.runtime.quantize import quantize_nodes
from convslim.runtime.sessions import open_session
from convslim.runtime.timing import TimingSettings, compare, time_sessions

SLOWER = 1.10  # int8 must measure this much slower before a node goes back to fp32 (timings scatter)
STEADY = 0.5  # relative IQR above which a timing is too noisy to decide on


class NodeSpeeds:
    """int8 / fp32 time ratios of convs timed alone, keyed by what decides them (attributes, weight and input
    shapes, batch, int8 types), so identical convs are timed once while this object lives."""

    def __init__(self) -> None:
        self.ratios: dict[str, float | None] = {}

    def __len__(self) -> int:
        return len(self.ratios)


def slower_nodes(pre_path: Path, resolved: dict, batch: int, speeds: NodeSpeeds, seconds: float = 0.3):
    """Conv node name → reason, for the convs whose int8 micro-model measured slower than fp32."""
    model = onnx.load(str(pre_path))
    shapes = _input_shapes(model)
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in shapes:
            continue
        key = _signature(node, model, shapes[node.input[0]], batch, resolved)
        if key not in speeds.ratios:
            speeds.ratios[key] = time_node(model, node, shapes[node.input[0]], batch, resolved, seconds)
        ratio = speeds.ratios[key]
        if ratio is not None and ratio > SLOWER:
            found[node.name] = f"int8 measured {ratio:.2f}x the fp32 time of this node alone (batch {batch})"
    return found


def time_node(
    model, node, sample_shape: list[int], batch: int, resolved: dict, seconds: float
) -> float | None:
    """int8 / fp32 median time of ``node`` alone; None when either timing is too noisy to decide on."""
    micro = Extractor(model).extract_model([node.input[0]], [node.output[0]])
    x = normal((batch, *sample_shape))
    with tempfile.TemporaryDirectory(prefix="convslim-int8-node-") as scratch:
        fp32, int8 = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        onnx.save(micro, str(fp32))
        quantize_nodes(fp32, int8, x, dict(resolved, calibration_batch=batch), [])
        sessions = {
            name: open_session(path, ["CPUExecutionProvider"])
            for name, path in (("fp32", fp32), ("int8", int8))
        }
        settings = TimingSettings(seconds=seconds, min_runs=5, max_runs=200, warmup=2, min_rounds=2)
        timed = time_sessions(sessions, [x.numpy()], settings)
    if max(t.spread for t in timed.values()) > STEADY:
        return None
    return 1 / compare(timed["fp32"], timed["int8"])["speedup"]


def _input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Per-sample shapes (batch axis dropped) of every tensor whose shape inference found all other dims."""
    shapes = {}
    for info in [*model.graph.input, *model.graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) > 1 and all(d.HasField("dim_value") for d in dims[1:]):
            shapes[info.name] = [d.dim_value for d in dims[1:]]
    return shapes


def _signature(node, model, sample_shape, batch, resolved) -> str:
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    attrs = sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)
    fields = [attrs, weights.get(node.input[1]), len(node.input), sample_shape, batch]
    return json.dumps([fields, {k: resolved[k] for k in ("activation_type", "weight_type", "reduce_range")}])
