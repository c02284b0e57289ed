"""The report's sections, one per stage, each a frozen value the stage returns: ``PlanSection`` (planner),
``RewriteSection`` (passes), ``FinetuneSection`` (fine-tune), ``ExportSection``, ``VerifySection`` and
``DeploySection`` (export and verify), ``RunSection`` (how the run was made). ``Report`` assembles them; no stage
edits another's section.

``report.json`` keeps one flat layout (``SCHEMA_VERSION``, documented in the README): each section writes its own
keys. The sections whose JSON was always a dict a user reads by key (``finetune``, ``deploy``, ``run``) read like
that dict too: ``report.finetune["accuracy"]``.

Example:
    >>> section = PlanSection.of(plan)
    >>> section.form, section.planning is None
    ('dwsep', True)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from convslim.core import Plan

# 2: sections; speed.ort_cpu dropped (the same numbers are deploy.speed[batch]'s fp32 pair);
#    deploy.speed_not_measured says why deploy.speed is absent. 1 (no "schema_version" key): before.
SCHEMA_VERSION = 2


class _ReadsLikeADict(Mapping):
    """A section whose JSON is a dict users read by key: ``section[key]`` reads ``section.to_dict()[key]``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True)
class PlanSection:
    """What was planned: the form(s), the options in force and, for a budgeted plan, what the planner measured
    and predicted (``planning``; its ``planning_s`` is the stage's time)."""

    form: str
    options: Mapping[str, Any]
    planning: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, plan: Plan) -> PlanSection:
        return cls(plan.form, plan.options, plan.planning)

    @property
    def seconds(self) -> float | None:
        return None if self.planning is None else self.planning.get("planning_s")


@dataclass(frozen=True)
class RewriteSection:
    """What the rewrite built: per-layer decisions with their costs, totals, BatchNorms folded, trace notes."""

    trace_mode: str
    layers: tuple[Mapping[str, Any], ...]
    totals: Mapping[str, int]
    batchnorm_folded: int = 0
    notes: tuple[str, ...] = ()
    seconds: float | None = None  # preparing, planning and rewriting

    @classmethod
    def of(
        cls, plan: Plan, trace_mode: str, weight_errors: Mapping[str, float | None], **more
    ) -> RewriteSection:
        layers = tuple(_layer_row(d, weight_errors.get(d.name)) for d in plan.layers)
        keys = ("params_before", "params_after", "macs_before", "macs_after")
        totals = {k: sum(layer[k] for layer in layers) for k in keys}
        return cls(trace_mode, layers, totals, **more)


def _layer_row(decision, weight_error: float | None) -> dict[str, Any]:
    d = decision
    return {
        "name": d.name,
        "form": d.form,
        "setting": brief_setting(d.setting),
        "skipped_reason": d.skipped_reason,
        "weight_shape": d.weight_shape,
        "in_shape": d.in_shape,
        "out_shape": d.out_shape,
        "params_before": d.params_before,
        "params_after": d.params_after,
        "macs_before": d.macs_before,
        "macs_after": d.macs_after,
        "rel_weight_error": weight_error,
    }


def brief_setting(setting: dict[str, Any], longest: int = 8) -> dict[str, Any]:
    """The setting as the report shows it: per-channel lists (octave losses, channel scales) summarised as
    "N values, min..max"; ``plan.json`` keeps them whole."""
    out = {}
    for key, value in setting.items():
        if isinstance(value, (list, tuple)) and len(value) > longest:
            numbers = [v for v in value if isinstance(v, (int, float))]
            span = f", {min(numbers):.3g}..{max(numbers):.3g}" if numbers else ""
            out[key] = f"{len(value)} values{span}"
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class FinetuneSection(_ReadsLikeADict):
    """The fine-tune: the recipe's own report (``payload``: settings, stages, accuracy, summary; the recipe owns
    its keys) and the stage's time. Reads like the payload: ``section["accuracy"]``."""

    payload: Mapping[str, Any]
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.payload)


@dataclass(frozen=True)
class ExportSection:
    """The ONNX export of both models: op counts of ``model.onnx``, the fixed batch (None: dynamic), notes."""

    onnx_ops: Mapping[str, int]
    fixed_batch: int | None = None
    notes: tuple[str, ...] = ()
    seconds: float | None = None


@dataclass(frozen=True)
class VerifySection:
    """ONNX vs PyTorch parity of both models (the compressed one judged against the original's own error),
    compressed vs original closeness, where a failed parity first diverges. ``seconds`` covers the deployment
    check and timing too, as the report's ``timings_s.verify`` always has."""

    onnx_vs_torch: Mapping[str, Any]
    original_onnx_vs_torch: Mapping[str, Any]
    compressed_vs_original: Mapping[str, Any]
    divergence: Mapping[str, Any] = field(
        default_factory=dict
    )  # "original"/"compressed" → where, when failed
    notes: tuple[str, ...] = ()
    seconds: float | None = None

    @property
    def passed(self) -> bool:
        """ONNX matched PyTorch, and the compressed model's outputs are finite (NaN never passes)."""
        return self.failure is None

    @property
    def failure(self) -> str | None:
        """Why verification failed, in a few words, or None."""
        if not self.compressed_vs_original.get("finite", True):
            return "the compressed model's outputs hold NaN or infinite values"
        if not self.onnx_vs_torch["passed"]:
            return "ONNX output differs from PyTorch beyond --tolerance"
        return None

    def parity(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "original_onnx_vs_torch": self.original_onnx_vs_torch,
            "onnx_vs_torch": self.onnx_vs_torch,
        }
        out.update({f"{which}_divergence": found for which, found in self.divergence.items()})
        out["compressed_vs_original"] = self.compressed_vs_original
        return out


@dataclass(frozen=True)
class DeploySection(_ReadsLikeADict):
    """The models as deployed for the runtime target: files and hashes, int8 details, accuracy, every model timed
    together per batch (``speed``) and the fp32 pair again on one ORT thread (``speed_one_thread``), which
    compressed file to ship; ``other_providers``: the fp32 pair timed on CUDA / TensorRT (or why not). Reads like
    the report's ``deploy`` dict."""

    runtime: str
    precision: str
    export: Mapping[str, Any]
    onnx_sha256: Mapping[str, str]
    int8: Mapping[str, Any] | None = None
    accuracy: Mapping[str, Any] | None = None
    speed: Mapping[str, Any] | None = None
    speed_one_thread: Mapping[str, Any] | None = None
    recommended: Mapping[str, Any] | None = None
    speed_not_measured: str | None = None
    other_providers: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "runtime": self.runtime,
            "precision": self.precision,
            "export": self.export,
            "onnx_sha256": self.onnx_sha256,
        }
        if self.int8:
            out["int8"] = self.int8
        out["accuracy"] = self.accuracy
        optional = ("speed", "speed_one_thread", "recommended", "speed_not_measured")
        out.update({key: getattr(self, key) for key in optional if getattr(self, key) is not None})
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], other_providers: Mapping[str, Any], notes=()
    ) -> DeploySection:
        return cls(**dict(data), other_providers=other_providers, notes=tuple(notes))


@dataclass(frozen=True)
class RunSection(_ReadsLikeADict):
    """How the run was made: command line, input shapes, every option in force, versions, CPU, threads."""

    record: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


__all__ = [
    "SCHEMA_VERSION",
    "DeploySection",
    "ExportSection",
    "FinetuneSection",
    "PlanSection",
    "RewriteSection",
    "RunSection",
    "VerifySection",
    "brief_setting",
]
