"""Measured per-layer latency: each candidate against the original conv, in ONNX Runtime, cached on disk.

Method. For one conv and one candidate we build two micro-models (the BN-folded conv, and ``form.convert`` of
it), export both to ONNX in memory with the fast TorchScript exporter (``dynamo=False``; the dynamo exporter is
the fallback), open them with the session options of ``convslim.verify.make_session`` and time them
*interleaved in the same run* at the layer's real input shape and the target batch; the medians give the
candidate's ratio and the absolute time it saves. Graph-level work of ``form.finalize`` is not in the
micro-model, so savings it adds are not counted (the prediction errs low).

Cache. Results live in one JSON file under ``$CONVSLIM_CACHE_DIR`` (default ``~/.cache/convslim``), keyed by the
input shape, the conv's configuration, the form, the grid options, the replacement's structure, the batch, the
provider, the onnxruntime version and the CPU model. ResNet layers share shapes, so the cache hits within one
plan too.

Example:
    >>> cache = LatencyCache()
    >>> measure_candidates(prepared.traced.module, sites_by_name, candidates, batch=32, cache=cache)
    >>> candidates[0].measured["ratio"]
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import statistics
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm.auto import tqdm

from convslim.errors import UsageError
from convslim.verify import interleaved_times, make_session

CACHE_FILE = "latency-v2.json"  # v1 timed run-by-run alternation (biased: see verify)
NOISY = 1.0  # relative IQR above which a timing is retried and, if still noisy, not trusted from the cache
RETRIES = 2


def cache_dir() -> Path:
    return Path(os.environ.get("CONVSLIM_CACHE_DIR") or Path.home() / ".cache" / "convslim")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.entries, f)
        os.replace(tmp, self.path)  # atomic: a concurrent reader never sees half a file


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
    in_shape, conv, form: str, options: dict, replacement: nn.Module, batch: int, provider: str
) -> str:
    fields = {
        "in": [batch, *in_shape],
        "conv": conv_config(conv),
        "form": form,
        "options": options,
        "structure": structure(replacement),
        "provider": provider,
        "ort": ort.__version__,
        "cpu": cpu_model(),
    }
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def check_provider(provider: str) -> None:
    if provider not in ort.get_available_providers():
        raise UsageError(
            f"provider {provider} is not available in this onnxruntime "
            f"({', '.join(ort.get_available_providers())}); plan for CPUExecutionProvider"
        )


def onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """Fast legacy export to memory; the dynamo exporter when the legacy one cannot take the module."""
    module = module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            buffer = io.BytesIO()
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17)
            return buffer.getvalue()
        except Exception:  # noqa: BLE001
            from convslim.export import export_onnx, export_program

            with tempfile.TemporaryDirectory(prefix="convslim-plan-") as scratch:
                path = Path(scratch) / "m.onnx"
                export_onnx(export_program(module, (example,), dynamic_batch=False), (example,), path)
                return path.read_bytes()


def _session(model: bytes, provider: str) -> ort.InferenceSession:
    with tempfile.NamedTemporaryFile(
        suffix=".onnx"
    ) as f:  # make_session takes a path: same options as verify
        f.write(model)
        f.flush()
        return make_session(f.name, provider)


def time_pair(
    original: nn.Module, candidate: nn.Module, example: torch.Tensor, provider: str, seconds: float
) -> dict:
    """Interleaved medians of two modules on the same input (seconds per run) and their ratio; a timing whose
    spread (relative IQR) is above ``NOISY`` is retried up to ``RETRIES`` times and the steadiest one kept."""
    sessions = {
        "original": _session(onnx_bytes(original, example), provider),
        "candidate": _session(onnx_bytes(candidate, example), provider),
    }
    best = None
    for _ in range(1 + RETRIES):
        times = interleaved(sessions, example.numpy(), seconds)
        spread = max(_iqr(v) for v in times.values())
        if best is None or spread < best[1]:
            best = (times, spread)
        if spread <= NOISY:
            break
    times, spread = best
    orig, cand = (statistics.median(times[k]) for k in ("original", "candidate"))
    return {
        "orig_s": orig,
        "cand_s": cand,
        "ratio": cand / orig,
        "spread": spread,
        "runs": len(times["original"]),
    }


def interleaved(sessions: dict, array: np.ndarray, seconds: float, min_runs: int = 7) -> dict:
    return interleaved_times(sessions, [array], seconds, min_runs=min_runs, max_runs=200, warmup=2)


def _iqr(values: list[float]) -> float:
    q = np.percentile(values, [25, 50, 75])
    return float((q[2] - q[0]) / q[1]) if q[1] > 0 else 0.0


@torch.no_grad()
def measure_candidates(
    module: nn.Module,
    sites: dict,
    candidates: list,
    batch: int = 32,
    provider: str = "CPUExecutionProvider",
    cache: LatencyCache | None = None,
    seconds: float = 0.3,
    progress: bool = False,
) -> None:
    """Fill ``candidate.measured`` (ratio, orig_s, cand_s, saved_s for all calls of the conv, cached) in place."""
    check_provider(provider)
    cache = cache if cache is not None else LatencyCache()
    generator = torch.Generator().manual_seed(0)
    modules = dict(module.named_modules())
    for cand in tqdm(candidates, desc=f"measuring layers ({provider})", disable=not progress, leave=False):
        site, conv = sites[cand.layer], modules[cand.layer]
        try:
            replacement = cand.build(conv)
        except Exception as exc:  # noqa: BLE001  (a form that fails here only loses this candidate)
            cand.measured = {"error": f"convert failed: {str(exc)[:120]}"}
            continue
        key = cache_key(site.in_shape, conv, cand.form, cand.options, replacement, batch, provider)
        found = cache.get(key)
        if found is None:
            example = torch.randn((batch, *site.in_shape), generator=generator)
            try:
                found = time_pair(conv, replacement, example, provider, seconds)
            except Exception as exc:  # noqa: BLE001
                cand.measured = {"error": f"timing failed: {str(exc)[:120]}"}
                continue
            cache.put(key, found)
        calls = max(len(site.calls), 1)
        cand.measured = dict(found, saved_s=(found["orig_s"] - found["cand_s"]) * calls)
    cache.save()


def time_model(
    module: nn.Module, example_inputs: tuple, batch: int, provider: str, seconds: float = 1.5
) -> float:
    """Median seconds per run of the whole (BN-folded) model at ``batch`` in ORT: the base of the prediction."""
    check_provider(provider)
    example = torch.randn((batch, *example_inputs[0].shape[1:]), generator=torch.Generator().manual_seed(0))
    session = _session(onnx_bytes(module, example), provider)
    times = interleaved({"model": session}, example.numpy(), seconds, min_runs=5)
    return statistics.median(times["model"])
