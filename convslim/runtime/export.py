"""The one exporter: a module to ONNX with the dynamo exporter (one self-contained file, checked), as the user
receives it, and torch.export archives.

Every whole model convslim times or ships goes through ``export_model``: the pipeline's ``model.onnx`` and
``original.onnx`` and the planner's whole-model measurements are the same bytes for the same module and settings.
Single-layer micro-models of the planner take ``export_layer`` (the fast TorchScript exporter), because the
dynamo exporter costs seconds per call and a plan times hundreds of them.

Batch axis: dynamic by default. ``torch.export`` specialises a size-1 dimension, so a dynamic export traces
with two samples. When the dynamic export fails, the model is exported at the example's shape and the result
says so (``fallback``): callers put it in the report and on the terminal. ``static_shape`` asks for that fixed
shape on purpose (runtimes that need it).

Example:
    >>> exported = export_model(model, (torch.randn(1, 3, 32, 32),), "model.onnx", ExportSettings(opset=18))
    >>> exported.dynamic_batch, exported.fallback
    (True, None)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from convslim.errors import ConvslimError, UsageError


class ExportError(ConvslimError):
    """The model could not be exported; the message names the model and the exporter's first complaint."""


@dataclass(frozen=True)
class ExportSettings:
    """``opset``: ONNX opset (None: the exporter's default); ``static_shape``: fix every input dimension."""

    opset: int | None = None
    static_shape: bool = False


@dataclass
class Exported:
    """An exported model: the torch.export program, the ONNX file, and how its batch axis came out."""

    program: torch.export.ExportedProgram
    path: Path
    dynamic_batch: bool
    fallback: str | None  # why a dynamic batch was asked for and not obtained, else None

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def note(self) -> str | None:
        if self.fallback is None:
            return None
        shape = "x".join(map(str, fixed_input_shape(onnx.load(str(self.path)))))
        return (
            f"{self.path.name}: the dynamic-batch export failed ({self.fallback}); exported with a fixed input "
            f"shape {shape}, so it only runs at that batch size"
        )


def export_model(
    model: nn.Module, example_inputs: tuple, path: str | Path, settings: ExportSettings = ExportSettings()
) -> Exported:
    """Export ``model`` to ``path`` (dynamo exporter, checked) and return what came out."""
    check_opset(settings.opset)
    dynamic = not settings.static_shape
    program, fallback = export_program(model, example_inputs, dynamic_batch=dynamic)
    export_onnx(program, example_inputs, path, settings.opset)
    return Exported(program, Path(path), dynamic and fallback is None, fallback)


def export_bytes(
    model: nn.Module, example_inputs: tuple, settings: ExportSettings = ExportSettings()
) -> bytes:
    """``export_model`` into memory (the planner's whole-model measurements)."""
    with tempfile.TemporaryDirectory(prefix="convslim-export-") as scratch:
        path = Path(scratch) / "model.onnx"
        export_model(model, example_inputs, path, settings)
        return path.read_bytes()


def export_program(
    model: nn.Module, example_inputs: tuple, dynamic_batch: bool = True
) -> tuple[torch.export.ExportedProgram, str | None]:
    """``torch.export`` the model (dynamic batch on every tensor input when asked); returns the program and, when
    the dynamic export failed and a fixed-shape one was made instead, the exporter's first complaint."""
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=65536)
        dynamic_shapes = tuple({0: batch} if isinstance(x, torch.Tensor) else None for x in example_inputs)
        traced_inputs = tuple(_batch_of_two(x) for x in example_inputs)
        with _quiet_exporter():
            try:
                return torch.export.export(model.eval(), traced_inputs, dynamic_shapes=dynamic_shapes), None
            except Exception as exc:  # noqa: BLE001  (reported: the fixed-shape export below says why)
                fallback = _first_line(exc)
        return export_program(model, example_inputs, dynamic_batch=False)[0], fallback
    with _quiet_exporter():
        try:
            return torch.export.export(model.eval(), tuple(example_inputs)), None
        except Exception as exc:  # noqa: BLE001
            raise ExportError(_export_advice(exc)) from exc


_RAISING_CALL = re.compile(
    r'The following call raised this error:\s*\n\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)'
    r"\n\s*(?P<code>[^\n]+)"
)


def _export_advice(exc: Exception) -> str:
    """One line: which line of the model stops torch.export and what to do about it."""
    found = _RAISING_CALL.search(str(exc))
    where = (
        f"{found['file']}:{found['line']} (`{found['code'].strip()}` in {found['func']})" if found else None
    )
    if "data-dependent" in str(exc):
        return (
            f"torch.export cannot export the model: {where or 'its forward'} branches on tensor values; write "
            "that branch with torch.cond, or make the decision outside forward (e.g. a constructor argument)"
        )
    at = f" at {where}" if where else ""
    return f"torch.export cannot export the model{at}: {_first_line(exc)}"


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
    got = model_opset(model)
    if opset is not None and got != opset:
        path.unlink()
        raise ExportError(
            f"--opset {opset}: the exporter produced opset {got} (it converts below 18 only when every op "
            f"allows it); choose --opset {got} or above"
        )
    return model


def export_layer(module: nn.Module, example: torch.Tensor) -> bytes:
    """A single-layer micro-model in memory, with the fast TorchScript exporter (the dynamo exporter when the
    legacy one cannot take the module). Only for the planner's per-layer timings, never for a shipped model."""
    module = module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            buffer = io.BytesIO()
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17)
            return buffer.getvalue()
        except Exception:  # noqa: BLE001  (the exporter below raises a typed error if it fails too)
            return export_bytes(module, (example,), ExportSettings(static_shape=True))


def check_opset(opset: int | None) -> None:
    if opset is not None and not 7 <= opset <= 30:
        raise UsageError(f"--opset {opset}: expected an ONNX opset such as 17, 18 or 20")


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fixed_input_shape(model: onnx.ModelProto) -> list[int | str]:
    """The first input's dimensions (a name for a symbolic one)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters chat on stdout, stderr and the logging module; keep the user's terminal for our summary."""
    # "torch" covers torch.export, torch._dynamo and torch.fx (which logs whole graph dumps when export fails)
    names = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            _torch_cache_in_scratch(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
_USERS_CACHE = os.environ.get(CACHE_VARIABLE)  # as the user started the process (torch sets it on first use)


@contextlib.contextmanager
def _torch_cache_in_scratch():
    """torch.export makes TorchInductor's cache folder ($TMPDIR/torchinductor_$USER) on first use and leaves it
    there; export uses nothing in it. Unless the user chose a folder (``TORCHINDUCTOR_CACHE_DIR``), it goes into a
    temporary folder removed afterwards, so a run leaves nothing in $TMPDIR."""
    if _USERS_CACHE is not None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="convslim-torch-cache-") as scratch:
        os.environ[CACHE_VARIABLE] = scratch
        try:
            yield
        finally:
            os.environ.pop(CACHE_VARIABLE, None)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
