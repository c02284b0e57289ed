"""How a run was made, for the report's ``run`` section: versions, CPU, input shapes and settings.

Example:
    >>> run_record((torch.randn(1, 3, 32, 32),), {"command": "convslim compress ..."}, {"to": "dwsep"})["cpu"]
    'AMD EPYC 7B13 (2 logical cores)'
"""

from __future__ import annotations

import platform

import onnx
import onnxruntime
import torch

from convslim.core.machine import cpu_name
from convslim.version import __version__


def run_record(example_inputs: tuple, record: dict | None, settings: dict) -> dict:
    """The report's ``run`` section: versions, CPU, input shapes, the compress settings, and ``record``."""
    return {
        **(record or {}),
        "input_shapes": [list(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)],
        "compress_options": dict(settings),
        "versions": {
            "convslim": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }
