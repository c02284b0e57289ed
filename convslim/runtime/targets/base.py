"""What a runtime target is: where it runs (ORT execution providers), in which precision, and how the exported
fp32 model becomes the model it deploys.

Example:
    >>> class Cpu(Target):
    ...     name, providers = "cpu", ("CPUExecutionProvider",)
    >>> register_target(Cpu())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from convslim.runtime.sessions import open_session


@dataclass
class Deployed:
    """The model file a target runs, and what making it did (int8: settings and nodes kept in fp32)."""

    path: Path
    info: dict = field(default_factory=dict)


class Target:
    """A runtime target. Subclasses set ``name``, ``providers`` (most preferred first) and ``precision``, and
    override ``deploy`` when the deployed model differs from the exported one."""

    name: str = ""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    precision: str = "fp32"
    needs_calibration: bool = False
    description: str = ""

    def unavailable(self) -> str | None:
        """None when this machine can run the target, else why not (for the report)."""
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            return f"{missing[0]} is not in this onnxruntime ({', '.join(ort.get_available_providers())})"
        return None

    def session(self, model: str | Path | bytes, threads: int | None = None) -> ort.InferenceSession:
        """A session on ``model`` with this target's providers; ``threads``: intra-op threads (None: ORT's
        default)."""
        return open_session(model, self.providers, threads)

    def deploy(self, fp32_path: Path, out_path: Path, calibration=None) -> Deployed:
        """The model this target runs, made from the exported fp32 model (fp32 targets run it as is)."""
        return Deployed(Path(fp32_path))

    def deploy_bytes(self, fp32_model: bytes, calibration=None, as_shipped: bool = False) -> bytes:
        """``deploy`` for a model held in memory: the planner's micro-models, and with ``as_shipped`` its
        whole-model rounds (then as ``deploy`` would ship it, as far as that needs no held-out images)."""
        return fp32_model

    @property
    def cache_key(self) -> str:
        """What keys this target's latencies apart: its name and precision (int8 and fp32 never share)."""
        return f"{self.name}/{self.precision}/{'+'.join(self.providers)}"
