"""One ``onnxruntime.quantization.quantize_static`` call (QDQ, per-channel weights, min/max calibration) fed by
a ``CalibrationDataReader`` over a tensor of images: the step ``int8`` and ``int8_speed`` share.

Example:
    >>> quantize_nodes(Path("pre.onnx"), Path("int8.onnx"), images, Int8Settings().resolved(), exclude=[])
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")  # the nodes int8 is for; the rest only passes int8 tensors along


class TensorReader(CalibrationDataReader):
    """Feeds ``x`` to the calibrator in batches (a model with a fixed batch gets exactly that batch)."""

    def __init__(self, x: torch.Tensor, input_name: str, batch: int):
        self.x, self.input_name, self.batch = x.detach().float().cpu().numpy(), input_name, batch
        self._batches: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict | None:
        if self._batches is None:
            stop = len(self.x) - len(self.x) % self.batch
            self._batches = (self.x[i : i + self.batch] for i in range(0, max(stop, 1), self.batch))
        batch = next(self._batches, None)
        return None if batch is None or len(batch) < self.batch else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = None


def quantize_nodes(
    pre_path: Path, out_path: Path, calibration: torch.Tensor, settings: dict, exclude: list[str]
) -> list[str]:
    """One ``quantize_static`` run (QDQ, per-channel weights) keeping ``exclude`` (node names) in fp32, and with
    them the glue nodes between fp32 nodes (``fp32_glue``); returns those glue nodes."""
    model = onnx.load(str(pre_path))
    glue = fp32_glue(model, set(exclude))
    name = model.graph.input[0].name
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = (
        dim.dim_value if dim.HasField("dim_value") else min(settings["calibration_batch"], len(calibration))
    )
    with _quiet_root_logger():
        reader = TensorReader(calibration, name, batch)
        _quantize_static(pre_path, out_path, reader, settings, [*exclude, *glue])
    return glue


def fp32_glue(model: onnx.ModelProto, fp32: set[str]) -> list[str]:
    """Nodes other than Conv/Gemm/MatMul (Add, Relu, Pad, pooling, ...) that join their fp32 neighbours.

    Quantizing a node that sits next to an fp32 conv and next to no int8 conv or linear buys nothing, since no
    int8 kernel reads or writes its tensors, and costs a Quantize/Dequantize pair on each side. Grown from
    ``fp32`` to a fixed point: a node joins when it has a neighbour in fp32 and none that is an int8
    Conv/Gemm/MatMul. Nodes far from any fp32 node keep their int8 neighbours' quantization (their Q/DQ pairs
    fuse into the int8 kernels), which measured faster on the original ResNet-20 than an fp32 shortcut.

    Example:
        >>> fp32_glue(model, {"conv_a", "conv_b"})   # conv_a -> relu -> conv_b -> add -> flatten -> gemm
        ['relu', 'add']
    """
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    neighbours = {
        n.name: [producer[t] for t in n.input if t in producer]
        + [c for t in n.output for c in consumers.get(t, [])]
        for n in model.graph.node
    }
    int8 = {n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name not in fp32}
    glue = [n.name for n in model.graph.node if n.op_type not in COMPUTE_OPS and n.name not in fp32]
    kept, grown = set(fp32), True
    while grown:
        joining = {
            g
            for g in glue
            if g not in kept
            and any(n.name in kept for n in neighbours[g])
            and not any(n.name in int8 for n in neighbours[g])
        }
        kept |= joining
        grown = bool(joining)
    return [g for g in glue if g in kept]


def _quantize_static(pre_path, out_path, reader, settings: dict, exclude: list[str]) -> None:
    quantize_static(
        str(pre_path),
        str(out_path),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=settings["per_channel"],
        reduce_range=settings["reduce_range"],
        activation_type=TYPES[settings["activation_type"]],
        weight_type=TYPES[settings["weight_type"]],
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
    )


class _FromOrtQuantization(logging.Filter):
    """Drops the records onnxruntime.quantization logs on the root logger; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"onnxruntime{os.sep}quantization" not in record.pathname


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns on the root logger (e.g. to pre-process a micro-model that needs none);
    keep the user's terminal for convslim's summary without touching the root logger's level: a filter drops
    those records alone, the ``onnxruntime`` logger goes to ERROR, and a handler stands in while root has none,
    so ``logging.warning`` does not install one (its ``basicConfig``). All is put back afterwards."""
    root, ort_logger = logging.getLogger(), logging.getLogger("onnxruntime")
    quiet, stand_in, ort_level = _FromOrtQuantization(), logging.NullHandler(), ort_logger.level
    root.addFilter(quiet)
    ort_logger.setLevel(logging.ERROR)  # its named loggers (onnxruntime.quantization.*) too
    added = not root.handlers
    if added:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        ort_logger.setLevel(ort_level)
        if added:
            root.removeHandler(stand_in)
