"""Which kinds of conv the *whole* int8 model runs faster with in fp32, timed as the user will run it.

Why the whole model. A conv timed alone (``int8_speed``) pays a Quantize at its input and a Dequantize at its
output, so a cheap conv looks slow in int8 alone; inside a model it may sit between int8 neighbours. The reverse
also happens: a conv kept in fp32 among int8 ones costs a Quantize/Dequantize pair at each side. Measured on
ResNet-20 with every conv a rank-1 dwsep (ORT 1.32, AVX2 without VNNI, batch 32): the depthwise convs took
3.5 ms in int8 against 1.2 ms in fp32, the pointwise ones 1.2 ms in either; the whole int8 model ran 0.68x the
fp32 one, and with only its depthwise convs in fp32 (Quantize/Dequantize around each) 0.32x.

Method. Greedy over kinds, in ``KIND_ORDER``: quantize the model with one more kind kept in fp32, time it against
the best so far in alternating blocks at the deployment batch, keep the change when it measured faster by
``MARGIN``. Last, the best int8 model is timed against the fp32 model itself; when fp32 is faster every node
stays in fp32, and the report says so (ship ``model.onnx``).

Example:
    >>> kinds_faster_in_fp32(Path("pre.onnx"), images, resolved, excluded={}, kinds=node_kinds(model), batch=32)
    {'node_conv2d_2': 'the whole model ran 1.45x faster with its depthwise convs in fp32 (batch 32)', ...}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch

from convslim.core.seeded import normal
from convslim.runtime.quantize import quantize_nodes
from convslim.runtime.sessions import open_session
from convslim.runtime.timing import TimingSettings, compare, time_sessions

KIND_ORDER = ("depthwise conv", "grouped conv", "pointwise conv", "dense conv", "first conv", "linear")
MARGIN = 1.03  # a change must measure this much faster to be kept (timings scatter by a few percent)
SPEED_IMAGES = 64  # calibration does not change the graph's speed: a few images keep each trial short
TIMING = TimingSettings(seconds=2.0, min_rounds=4, min_runs=5, warmup=2)


def kinds_faster_in_fp32(
    pre: Path,
    images: torch.Tensor,
    resolved: dict,
    excluded: dict[str, str],
    kinds: dict[str, str],
    batch: int,
) -> dict[str, str]:
    """Node → reason for the nodes (beyond ``excluded``) the whole model measured faster with in fp32."""
    found: dict[str, str] = {}
    x = _batch_input(pre, batch)
    with tempfile.TemporaryDirectory(prefix="convslim-int8-whole-") as scratch:

        def quantized(fp32_nodes: dict) -> bytes:
            out = Path(scratch) / "trial.onnx"
            few = images[: max(SPEED_IMAGES, resolved["calibration_batch"])]
            quantize_nodes(pre, out, few, resolved, list(fp32_nodes))
            return out.read_bytes()

        best = quantized(excluded)
        for kind in KIND_ORDER:
            nodes = [n for n, k in kinds.items() if k == kind and n not in excluded and n not in found]
            if not nodes:
                continue
            trial = quantized({**excluded, **found, **dict.fromkeys(nodes, "")})
            ratio = speed_ratio(best, trial, x)
            if ratio > MARGIN:
                why = f"the whole model ran {ratio:.2f}x faster with its {kind}s in fp32 (batch {batch})"
                found.update(dict.fromkeys(nodes, why))
                best = trial
        rest = [n for n in kinds if n not in excluded and n not in found]
        if rest:
            ratio = speed_ratio(best, pre.read_bytes(), x)
            if ratio > MARGIN:
                why = f"the whole model ran {ratio:.2f}x faster in fp32 than with any node in int8 (batch {batch})"
                found.update(dict.fromkeys(rest, why))
    return found


def speed_ratio(reference: bytes, trial: bytes, x: torch.Tensor) -> float:
    """How many times faster ``trial`` ran than ``reference`` (medians of per-round ratios, alternating)."""
    sessions = {
        name: open_session(m, ["CPUExecutionProvider"]) for name, m in (("ref", reference), ("trial", trial))
    }
    timed = time_sessions(sessions, [x.numpy()], TIMING)
    return compare(timed["ref"], timed["trial"])["speedup"]


def _batch_input(pre: Path, batch: int) -> torch.Tensor:
    """Seeded normal input for the model's first input at ``batch`` (or at its fixed batch)."""
    dims = onnx.load(str(pre), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    return normal(shape)
