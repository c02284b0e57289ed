"""One ``onnxruntime.quantization.quantize_static`` call (QDQ, per-channel weights, min/max calibration) fed by
a ``CalibrationDataReader`` over a tensor of images: the step ``int8`` and ``int8_speed`` share.

Example:
    >>> quantize_nodes(Path("pre.onnx"), Path("int8.onnx"), images, Int8Settings().resolved(), exclude=[])
"""

from __future__ import annotations

import contextlib
import logging
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
):
    """One ``quantize_static`` run (QDQ, per-channel weights) keeping ``exclude`` (node names) in fp32."""
    model = onnx.load(str(pre_path))
    name = model.graph.input[0].name
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = (
        dim.dim_value if dim.HasField("dim_value") else min(settings["calibration_batch"], len(calibration))
    )
    with _quiet_root_logger():
        _quantize_static(pre_path, out_path, TensorReader(calibration, name, batch), settings, exclude)


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


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns on the root logger (e.g. to pre-process a micro-model that needs none);
    keep the user's terminal for convslim's summary."""
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(level)
