"""The runtime layer: the one place that exports a module to ONNX (``export``), opens ONNX Runtime sessions for
a target (``targets``: ``cpu``, ``cpu-int8``, ``cuda``, ``tensorrt``), quantizes to int8 (``int8``) and times
models (``timing``, ``measure``). verify, the planner, the pipeline and the benchmarks all go through it.

Example:
    >>> from convslim.runtime import ExportSettings, export_model, get_target, measure_speed
    >>> export_model(model, (x,), "model.onnx", ExportSettings(opset=18))
    >>> get_target("cpu").session("model.onnx")
"""

from convslim.runtime.export import Exported, ExportError, ExportSettings, export_bytes, export_model
from convslim.runtime.measure import measure_models, measure_speed
from convslim.runtime.targets import available_target, get_target, register_target, target_names
from convslim.runtime.targets.base import Target
from convslim.runtime.timing import Timing, TimingSettings, compare, time_sessions

__all__ = [
    "ExportError",
    "ExportSettings",
    "Exported",
    "Target",
    "Timing",
    "TimingSettings",
    "available_target",
    "compare",
    "export_bytes",
    "export_model",
    "get_target",
    "measure_models",
    "measure_speed",
    "register_target",
    "target_names",
    "time_sessions",
]
