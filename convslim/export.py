"""ONNX export (dynamo exporter, one self-contained file, dynamic batch axis) and torch.export archives.

Example:
    >>> program = export_program(model, (torch.randn(1, 3, 32, 32),))
    >>> export_onnx(program, (torch.randn(1, 3, 32, 32),), "model.onnx")
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from convslim.errors import ConvslimError


class ExportError(ConvslimError):
    """The model could not be exported; the message names the model and the exporter's first complaint."""


def export_program(model: nn.Module, example_inputs: tuple, dynamic_batch: bool = True):
    """``torch.export`` the model with a dynamic batch dimension on every tensor input."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=65536)
        dynamic_shapes = tuple({0: batch} if isinstance(x, torch.Tensor) else None for x in example_inputs)
        # torch.export specialises a size-1 dimension, so trace with two samples
        example_inputs = tuple(_batch_of_two(x) for x in example_inputs)
    with _quiet_exporter():
        try:
            return torch.export.export(model.eval(), tuple(example_inputs), dynamic_shapes=dynamic_shapes)
        except Exception as exc:  # noqa: BLE001
            if dynamic_batch:
                return export_program(model, example_inputs, dynamic_batch=False)
            raise ExportError(f"torch.export failed: {_first_line(exc)}") from exc


def _batch_of_two(x):
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
        return x.expand(2, *x.shape[1:]).contiguous()
    return x


def export_onnx(
    program, example_inputs: tuple, path: str | Path, opset: int | None = None
) -> onnx.ModelProto:
    """Write ``program`` (an ExportedProgram or module) to ``path`` as one ONNX file and check it."""
    path = Path(path)
    with _quiet_exporter():
        try:
            torch.onnx.export(
                program,
                tuple(example_inputs),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ONNX export failed: {_first_line(exc)}") from exc
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters chat on stdout, stderr and the logging module; keep the user's terminal for our summary."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
