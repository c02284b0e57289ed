"""``--runtime cpu-int8``: the exported model quantized to int8 (QDQ, static, per-channel weights) on ONNX
Runtime's CPU execution provider. Needs calibration images (``--data`` or ``--calib-data``); see
``convslim.runtime.int8`` for the types, ``reduce_range`` and the nodes kept in fp32."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from convslim.errors import UsageError
from convslim.runtime.int8 import Calibration, Int8Settings, quantize
from convslim.runtime.targets.base import Deployed, Target
from convslim.runtime.targets.registry import register_target


class CpuInt8(Target):
    name = "cpu-int8"
    providers = ("CPUExecutionProvider",)
    precision = "int8"
    needs_calibration = True
    description = "static int8 (QDQ, per-channel weights) on ONNX Runtime's CPU execution provider"

    def __init__(self, settings: Int8Settings | None = None):
        self.settings = settings or Int8Settings()

    def with_settings(self, settings: Int8Settings) -> CpuInt8:
        """This target with other int8 settings (the API's ``int8=`` and the CLI's int8 flags)."""
        return type(self)(settings)

    def deploy(self, fp32_path: Path, out_path: Path, calibration: Calibration | None = None) -> Deployed:
        if calibration is None:
            raise UsageError(
                "--runtime cpu-int8 needs calibration images: pass --data TRAIN (.npz, .pt or image folder) "
                "or --calib-data IMAGES"
            )
        info = quantize(Path(fp32_path), Path(out_path), calibration, self.settings, self.session)
        return Deployed(Path(out_path), info)

    def deploy_bytes(self, fp32_model: bytes, calibration: Calibration | None = None) -> bytes:
        """Quantize a micro-model; without calibration it calibrates on seeded normal inputs (latency only)."""
        with tempfile.TemporaryDirectory(prefix="convslim-int8-") as scratch:
            src, dst = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
            src.write_bytes(fp32_model)
            if calibration is None:
                calibration = Calibration(_random_like(self.session(fp32_model)))
            quick = Int8Settings(
                **{**vars(self.settings), "auto_exclude": False, "speed_check": False, "exclude": ()}
            )
            quantize(src, dst, calibration, quick, self.session)
            return dst.read_bytes()


def _random_like(session) -> torch.Tensor:
    shape = [d if isinstance(d, int) else 2 for d in session.get_inputs()[0].shape]
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


register_target(CpuInt8())
