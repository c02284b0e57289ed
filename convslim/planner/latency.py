"""Measured per-layer latency: each candidate against the original conv, in ONNX Runtime, cached on disk.

Method. For one conv and one candidate we build two micro-models (the BN-folded conv, and ``form.convert`` of
it), export both to ONNX in memory (``runtime.export.export_layer``), deploy them for the target (``cpu-int8``
quantizes each, and times it in fp32 too: a layer counts at its faster precision) and time them in alternating
blocks (``runtime.timing``) at the layer's real input shape and the target batch; the medians give the
candidate's ratio and the absolute time it saves. Graph-level work of ``form.finalize`` is not in the
micro-model, so savings it adds are not counted (the prediction errs low).

Cache. Results live in one JSON file under ``$CONVSLIM_CACHE_DIR`` (default ``~/.cache/convslim``), keyed by the
input shape, the conv's configuration, the form, the grid options, the replacement's structure, the batch, the
target (name, precision, providers), the onnxruntime version and the CPU model. ResNet layers share shapes, so the cache hits within one
plan too.

Example:
    >>> cache = LatencyCache()
    >>> measure_candidates(prepared.traced.module, sites_by_name, candidates, LayerTiming(batch=32), cache)
    >>> candidates[0].measured["ratio"]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph as OrtInvalidGraph
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException as OrtRuntimeException
from torch import nn
from tqdm.auto import tqdm

from convslim.core import seeded
from convslim.core.machine import cpu_model
from convslim.core.outputs import atomic_write_text
from convslim.errors import ConvslimError
from convslim.runtime.export import export_layer
from convslim.runtime.targets import available_target, get_target
from convslim.runtime.timing import TimingSettings, random_inputs, time_sessions

# v1 timed run-by-run alternation (biased: see runtime.timing); v2 keyed by provider; v3 by target and precision;
# v4: an int8 target's layers at their faster precision
CACHE_FILE = "latency-v4.json"
NOISY = 1.0  # relative IQR above which a timing is retried and, if still noisy, not trusted from the cache
RETRIES = 2


def cache_dir() -> Path:
    return Path(os.environ.get("CONVSLIM_CACHE_DIR") or Path.home() / ".cache" / "convslim")


class LatencyCache:
    """A dict of measurements persisted as JSON; ``hits``/``misses`` count lookups of this run."""

    def __init__(self, directory: str | Path | None = None):
        self.path = Path(directory or cache_dir()) / CACHE_FILE
        self.hits = 0
        self.misses = 0
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.entries = {}  # a missing or corrupt cache only costs a re-measurement

    def get(self, key: str) -> dict | None:
        found = self.entries.get(key)
        if found is not None and found.get("spread", 0.0) > NOISY:
            found = None  # measured on a busy machine: measure again rather than trust it
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.entries))  # a concurrent reader never sees half a file


def conv_config(conv: nn.Conv2d) -> dict:
    return {
        "weight": list(conv.weight.shape),
        "stride": list(conv.stride),
        "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
        "dilation": list(conv.dilation),
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }


def structure(module: nn.Module) -> str:
    """The replacement's layout (modules and parameter shapes), not its weights: latency depends on that."""
    shapes = [(n, list(p.shape)) for n, p in module.named_parameters()]
    return hashlib.sha1((repr(module) + json.dumps(shapes)).encode()).hexdigest()[:16]


def cache_key(
    in_shape, conv, form_options: tuple[str, dict], replacement: nn.Module, batch: int, target
) -> str:
    """The cache key of one candidate (``form_options``: its form and grid options) of one conv."""
    form, options = form_options
    fields = {
        "in": [batch, *in_shape],
        "conv": conv_config(conv),
        "form": form,
        "options": options,
        "structure": structure(replacement),
        "target": get_target(target).cache_key,  # name, precision and providers: int8 never reads fp32
        "ort": ort.__version__,
        "cpu": cpu_model(),
    }
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def time_pair(
    original: nn.Module, candidate: nn.Module, example: torch.Tensor, target, seconds: float
) -> dict:
    """Interleaved medians of two modules on the same input (seconds per run) and their ratio, both deployed
    for ``target``; a timing whose spread (relative IQR) is above ``NOISY`` is retried up to ``RETRIES`` times
    and the steadiest one kept. For an int8 target each module is timed in fp32 and in int8 and its faster
    precision counts, since the deployment keeps in fp32 what int8 makes slower (``runtime.int8_whole``)."""
    sessions = {}
    for name, module in (("original", original), ("candidate", candidate)):
        exported = export_layer(module, example)
        sessions[name] = target.session(target.deploy_bytes(exported))
        if target.precision == "int8":
            sessions[f"{name} fp32"] = target.session(exported)
    settings = TimingSettings(seconds=seconds, min_runs=7, max_runs=200, warmup=2, min_rounds=1)
    best = None
    for _ in range(1 + RETRIES):
        timed = time_sessions(sessions, [example.numpy()], settings)
        spread = max(t.spread for t in timed.values())
        if best is None or spread < best[1]:
            best = (timed, spread)
        if spread <= NOISY:
            break
    timed, spread = best
    orig, cand = (
        min(t.median_s for n, t in timed.items() if n.startswith(k)) for k in ("original", "candidate")
    )
    return {
        "orig_s": orig,
        "cand_s": cand,
        "ratio": cand / orig,
        "spread": spread,
        "runs": timed["original"].runs,
    }


@dataclass(frozen=True)
class LayerTiming:
    """How each candidate is timed: at ``batch`` on ``target`` for ``seconds``, with a progress bar or not."""

    batch: int = 32
    target: object = "cpu"
    seconds: float = 0.3
    progress: bool = False


# what may fail for one candidate without being a bug: a form refusing this conv (a typed error), the exporter
# refusing the micro-model, ONNX Runtime unable to load or run it
SKIPPED_CANDIDATE = (ConvslimError, OrtFail, OrtInvalidGraph, OrtNotImplemented, OrtRuntimeException)


@torch.no_grad()
def measure_candidates(
    module: nn.Module, sites: dict, candidates: list, timing: LayerTiming, cache: LatencyCache | None = None
) -> None:
    """Fill ``candidate.measured`` (ratio, orig_s, cand_s, saved_s for all calls of the conv, cached) in place,
    timed on the target (its precision too: ``cpu-int8`` times int8 micro-models, cached apart from fp32). A
    candidate its form refuses or ONNX Runtime cannot run gets ``{"error": why}``; any other exception is a bug
    and propagates."""
    target = available_target(timing.target)
    cache = cache if cache is not None else LatencyCache()
    gen = seeded.generator()  # one stream over the candidates, as before the cache
    modules = dict(module.named_modules())
    for cand in tqdm(
        candidates, desc=f"measuring layers ({target.name})", disable=not timing.progress, leave=False
    ):
        site, conv = sites[cand.layer], modules[cand.layer]
        try:
            replacement = cand.build(conv)
        except ConvslimError as exc:
            cand.measured = {"error": f"convert failed: {str(exc)[:120]}"}
            continue
        key = cache_key(site.in_shape, conv, (cand.form, cand.options), replacement, timing.batch, target)
        found = cache.get(key)
        if found is None:
            example = seeded.normal((timing.batch, *site.in_shape), gen)
            try:
                found = time_pair(conv, replacement, example, target, timing.seconds)
            except SKIPPED_CANDIDATE as exc:
                cand.measured = {"error": f"timing failed: {str(exc)[:120]}"}
                continue
            cache.put(key, found)
        calls = max(len(site.calls), 1)
        cand.measured = dict(found, saved_s=(found["orig_s"] - found["cand_s"]) * calls, calls=calls)
    cache.save()


def time_model(onnx_model: bytes, example_inputs: tuple, batch: int, target, seconds: float = 1.5) -> float:
    """Median seconds per run of a whole deployed model (bytes) at ``batch`` on ``target``: the prediction's
    base. The planner passes the model exported as the user receives it (``runtime.export_bytes``)."""
    target = available_target(target)
    inputs = random_inputs(example_inputs, batch)
    settings = TimingSettings(seconds=seconds, min_runs=5, max_runs=200, warmup=2, min_rounds=1)
    return time_sessions({"model": target.session(onnx_model)}, inputs, settings)["model"].median_s
