"""``--runtime cpu-int8``: the exported model quantized to int8 (QDQ, static, per-channel weights) on ONNX
Runtime's CPU execution provider. Needs calibration images (``--data`` or ``--calib-data``); see
``convslim.runtime.int8`` for the types, ``reduce_range`` and the nodes kept in fp32."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from convslim.core.seeded import normal
from convslim.errors import UsageError
from convslim.runtime.int8 import Calibration, Int8Settings, matching, quantize
from convslim.runtime.int8_speed import NodeSpeeds
from convslim.runtime.targets.base import Deployed, Target
from convslim.runtime.targets.registry import register_target


class CpuInt8(Target):
    name = "cpu-int8"
    providers = ("CPUExecutionProvider",)
    precision = "int8"
    needs_calibration = True
    description = "static int8 (QDQ, per-channel weights) on ONNX Runtime's CPU execution provider"

    def __init__(self, settings: Int8Settings | None = None, speeds: NodeSpeeds | None = None):
        self.settings = settings or Int8Settings()
        self.speeds = speeds  # per-conv int8 timings kept across deployments (None: each one times its own)

    def with_settings(self, settings: Int8Settings, speeds: NodeSpeeds | None = None) -> CpuInt8:
        """This target with other int8 settings (the API's ``int8=`` and the CLI's int8 flags) and the per-conv
        timings to share (``DeploySettings`` passes its run's)."""
        return type(self)(settings, speeds)

    def deploy(self, fp32_path: Path, out_path: Path, calibration: Calibration | None = None) -> Deployed:
        if calibration is None:
            raise UsageError(
                "--runtime cpu-int8 needs calibration images: pass --data TRAIN (.npz, .pt or image folder) "
                "or --calib-data IMAGES"
            )
        info = quantize(
            Path(fp32_path), Path(out_path), calibration, self.settings, self.session, self.speeds
        )
        return Deployed(Path(out_path), info)

    def deploy_bytes(
        self, fp32_model: bytes, calibration: Calibration | None = None, as_shipped: bool = False
    ) -> bytes:
        """Quantize a model held in memory; without calibration it calibrates on seeded normal inputs (latency
        only). Micro-models (the planner's per-layer timings) get every node in int8. ``as_shipped`` (the
        planner's whole-model rounds) keeps in fp32 what ``deploy`` keeps there for speed or at the user's
        request, so the planner times the graph the user receives; the accuracy fallback, which needs held-out
        images, is ``deploy``'s alone."""
        with tempfile.TemporaryDirectory(prefix="convslim-int8-") as scratch:
            src, dst = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
            src.write_bytes(fp32_model)
            if calibration is None:
                calibration = Calibration(_random_like(self.session(fp32_model)))
            if as_shipped:  # the user's exclusions that name something of this model (a round's plan may not)
                own = matching(self.settings.exclude, onnx.load_from_string(fp32_model))
                settings = replace(self.settings, auto_exclude=False, exclude=own)
            else:
                settings = replace(self.settings, auto_exclude=False, speed_check=False, exclude=())
            quantize(src, dst, calibration, settings, self.session, self.speeds)
            return dst.read_bytes()


def _random_like(session) -> torch.Tensor:
    shape = [d if isinstance(d, int) else 2 for d in session.get_inputs()[0].shape]
    return normal(shape)


register_target(CpuInt8())
