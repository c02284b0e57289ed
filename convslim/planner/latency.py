"""Measured per-layer latency: each candidate against the original conv, in ONNX Runtime, cached on disk.

Method. For one conv and one candidate we build two micro-models (the BN-folded conv, and ``form.convert`` of
it), export both to ONNX in memory (``runtime.export.export_layer``), deploy them for the target (``cpu-int8``
quantizes each, and times it in fp32 too: a layer counts at its faster precision) and time them in alternating
blocks of 20 ms (``runtime.timing``) at the layer's real input shape and the target batch; the median of the
per-round ratios is the candidate's ratio r, and the conv's time t times 1 − r the time it saves, where t is the
median of the original's run time over all the conv's pairs (``share_layer_times_``: a pair's ratio is steady, its
absolute time drifts with the machine between pairs).
Graph-level work of ``form.finalize`` is not in the micro-model, so savings it adds are not counted (the
prediction errs low).

Cache. Results live in one JSON file under ``$CONVSLIM_CACHE_DIR`` (default ``~/.cache/convslim``), keyed by the
input shape, the conv's configuration, the form, the grid options, the replacement's structure, the batch, the
target (name, precision, providers), the onnxruntime version and the CPU model. ResNet layers share shapes, so the cache hits within one
plan too. The key cannot see the machine's load: before a plan trusts cached timings it re-times the
``SPOT_CHECKS`` cached candidates that save the most, and if their ratios now differ from the cached ones by a
median factor above ``STALE`` (either way), every candidate is re-measured and the cache rewritten
(``spot_check``): a cache written while other work loaded the machine, or copied from another machine
with the same CPU model, is not trusted blindly. It cannot catch one or two entries off by 10-30 %, which at a
target beyond what the layer timings add up to can still flip near-tied choices (README, the CLI's runs).

Example:
    >>> cache = LatencyCache()
    >>> measure_candidates(prepared.traced.module, sites_by_name, candidates, LayerTiming(batch=32), cache)
    >>> candidates[0].measured["ratio"]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
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
from convslim.runtime.timing import TimingSettings, compare, random_inputs, time_sessions

# v1 timed run-by-run alternation (biased: see runtime.timing); v2 keyed by provider; v3 by target and precision;
# v4: an int8 target's layers at their faster precision; v5: the ratio paired per round over short blocks
CACHE_FILE = "latency-v5.json"
NOISY = 1.0  # relative IQR above which a timing is retried and, if still noisy, not trusted from the cache
RETRIES = 2
SPOT_CHECKS = 3  # cached candidates re-timed before a plan trusts the cache
SPOT_SEED = 4321  # the spot check's inputs: apart from the stream the candidates are timed with
STALE = 1.4  # their median ratio this many times above or below the cached one: the cache is re-measured
# A pair is timed in blocks of PAIR_BLOCK_S, at least PAIR_ROUNDS rounds of A B / B A, with no cap on the runs, and
# its ratio is the median of the per-round ratios (``timing.compare``). Before v5 a 200-run cap ended a 0.3 ms
# layer's timing inside one block per model, so whatever changed the machine's speed between those two blocks went
# into the ratio: four timings of ResNet-32's layer3 dwsep rank 3 read 0.31-0.63, paired 0.57-0.60 (README).
PAIR_BLOCK_S = 0.02
PAIR_ROUNDS = 4


def cache_dir() -> Path:
    return Path(os.environ.get("CONVSLIM_CACHE_DIR") or Path.home() / ".cache" / "convslim")


class LatencyCache:
    """A dict of measurements persisted as JSON; ``hits``/``misses`` count lookups of this run."""

    def __init__(self, directory: str | Path | None = None):
        self.path = Path(directory or cache_dir()) / CACHE_FILE
        self.hits = 0
        self.misses = 0
        self.check: dict | None = None  # this run's spot check of cached timings (``spot_check``), if one ran
        self._fresh: set[str] | None = None  # distrusted: only keys measured in this run are read
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.entries = {}  # a missing or corrupt cache only costs a re-measurement

    def peek(self, key: str) -> dict | None:
        """The entry as ``get`` would return it, without counting a lookup."""
        if self._fresh is not None and key not in self._fresh:
            return None
        found = self.entries.get(key)
        if found is not None and found.get("spread", 0.0) > NOISY:
            return None  # measured on a busy machine: measure again rather than trust it
        return found

    def get(self, key: str) -> dict | None:
        found = self.peek(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value
        if self._fresh is not None:
            self._fresh.add(key)

    def distrust(self) -> None:
        """Read none of the entries found on disk for the rest of this run; what is measured replaces them."""
        self._fresh = set()

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
    """Two modules on the same input, both deployed for ``target``, timed in alternating short blocks: the
    original's median run (seconds) and the candidate's ratio to it, the median of the per-round ratios
    (``PAIR_BLOCK_S``); a timing whose spread (relative IQR) is above ``NOISY`` is retried up to ``RETRIES`` times
    and the steadiest one kept. For an int8 target each module is timed in fp32 and in int8 and its faster
    precision counts, since the deployment keeps in fp32 what int8 makes slower (``runtime.int8_whole``)."""
    sessions = {}
    for name, module in (("original", original), ("candidate", candidate)):
        exported = export_layer(module, example)
        sessions[name] = target.session(target.deploy_bytes(exported))
        if target.precision == "int8":
            sessions[f"{name} fp32"] = target.session(exported)
    settings = TimingSettings(
        seconds=seconds, block_seconds=PAIR_BLOCK_S, min_runs=7, warmup=2, min_rounds=PAIR_ROUNDS
    )
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
        min((t for n, t in timed.items() if n.startswith(k)), key=lambda t: t.median_s)
        for k in ("original", "candidate")
    )
    ratio = 1.0 / compare(orig, cand)["speedup"]
    return {
        "orig_s": orig.median_s,
        "cand_s": orig.median_s * ratio,
        "ratio": ratio,
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


@dataclass(frozen=True)
class _Pending:
    """A candidate ready to time: its conv's site, the conv, the replacement and the cache key."""

    cand: object
    site: object
    conv: nn.Module
    replacement: nn.Module
    key: str


@torch.no_grad()
def measure_candidates(
    module: nn.Module, sites: dict, candidates: list, timing: LayerTiming, cache: LatencyCache | None = None
) -> None:
    """Fill ``candidate.measured`` (ratio, orig_s, cand_s, saved_s for all calls of the conv, cached) in place,
    timed on the target (its precision too: ``cpu-int8`` times int8 micro-models, cached apart from fp32). A
    candidate its form refuses or ONNX Runtime cannot run gets ``{"error": why}``; any other exception is a bug
    and propagates. Cached timings are spot-checked first (``spot_check``)."""
    target = available_target(timing.target)
    cache = cache if cache is not None else LatencyCache()
    modules = dict(module.named_modules())
    pending = []
    for cand in candidates:
        site, conv = sites[cand.layer], modules[cand.layer]
        try:
            replacement = cand.build(conv)
        except ConvslimError as exc:
            cand.measured = {"error": f"convert failed: {str(exc)[:120]}"}
            continue
        key = cache_key(site.in_shape, conv, (cand.form, cand.options), replacement, timing.batch, target)
        pending.append(_Pending(cand, site, conv, replacement, key))
    spot_check(pending, cache, target, timing)
    gen = seeded.generator()  # one stream over the candidates, as before the cache
    for p in tqdm(
        pending, desc=f"measuring layers ({target.name})", disable=not timing.progress, leave=False
    ):
        found = cache.get(p.key)
        if found is None:
            example = seeded.normal((timing.batch, *p.site.in_shape), gen)
            try:
                found = time_pair(p.conv, p.replacement, example, target, timing.seconds)
            except SKIPPED_CANDIDATE as exc:
                p.cand.measured = {"error": f"timing failed: {str(exc)[:120]}"}
                continue
            cache.put(p.key, found)
        p.cand.measured = dict(found)
    share_layer_times_([p for p in pending if "ratio" in p.cand.measured])
    cache.save()


def share_layer_times_(measured: list[_Pending]) -> None:
    """Price every candidate of a conv against one time for that conv: the median of its pairs' original times.

    Each pair's ratio r is paired round by round and so survives a change in the machine's speed, but the
    original's run time t each pair reads does not: the candidates of one conv are timed seconds apart, and
    ResNet-20's layer3 conv read 0.45 ms in the dwsep pairs but 0.66 ms in the ``spatial`` one (a cache on an
    Intel Xeon, 2 cores, quiet), so the spatial option claimed 0.47 ms saved (0.66 · (1 − 0.295)) against dwsep
    rank 1's 0.34 ms (0.45 · (1 − 0.237)) although its ratio is the higher; the selections built on such claims
    measured 2.6x at whole-model level where a x3 target needed them. So saved = t_conv · (1 − r) · calls, with
    t_conv the median over the conv's candidates; the pair's own time stays as ``pair_orig_s``.

    Example: pairs (t, r) = (0.45, 0.24), (0.46, 0.41), (0.66, 0.30) → t_conv 0.46; savings 0.35, 0.27, 0.32 ms.
    """
    by_conv: dict[str, list[_Pending]] = {}
    for p in measured:
        by_conv.setdefault(p.cand.layer, []).append(p)
    for group in by_conv.values():
        conv_s = statistics.median(p.cand.measured["orig_s"] for p in group)
        for p in group:
            m, calls = p.cand.measured, max(len(p.site.calls), 1)
            m.update(pair_orig_s=m["orig_s"], orig_s=conv_s, cand_s=conv_s * m["ratio"], calls=calls)
            m["saved_s"] = conv_s * (1.0 - m["ratio"]) * calls


def spot_check(pending: list[_Pending], cache: LatencyCache, target, timing: LayerTiming) -> None:
    """Re-time the ``SPOT_CHECKS`` cached candidates that save the most; if the median of |log(ratio now /
    ratio cached)| is above log ``STALE``, distrust the cache (everything is re-measured). Sets ``cache.check``.

    Example: cached ratios 0.40, 0.61, 0.82 re-timed as 0.62, 0.90, 0.85 → factors 1.55, 1.48, 1.04, median
    1.48 > 1.4: stale."""
    cached = {p.key: (p, cache.peek(p.key)) for p in pending}
    cached = {k: v for k, v in cached.items() if v[1] is not None and v[1]["ratio"] > 0}
    if not cached:
        return
    biggest = sorted(cached.values(), key=lambda pf: pf[1]["cand_s"] - pf[1]["orig_s"])[:SPOT_CHECKS]
    gen = seeded.generator(SPOT_SEED)
    logs = []
    for p, found in biggest:
        example = seeded.normal((timing.batch, *p.site.in_shape), gen)
        try:
            now = time_pair(p.conv, p.replacement, example, target, timing.seconds)
        except SKIPPED_CANDIDATE:
            continue  # it ran when it was cached; if it no longer does, measuring it will say why
        logs.append(abs(math.log(now["ratio"] / found["ratio"])))
    if not logs:
        return
    factor = math.exp(statistics.median(logs))
    cache.check = {"checked": len(logs), "factor": round(factor, 3), "stale": factor > STALE}
    if factor > STALE:
        cache.distrust()


def time_model(onnx_model: bytes, example_inputs: tuple, batch: int, target, seconds: float = 1.5) -> float:
    """Median seconds per run of a whole deployed model (bytes) at ``batch`` on ``target``: the prediction's
    base. The planner passes the model exported as the user receives it (``runtime.export_bytes``)."""
    target = available_target(target)
    inputs = random_inputs(example_inputs, batch)
    settings = TimingSettings(seconds=seconds, min_runs=5, max_runs=200, warmup=2, min_rounds=1)
    return time_sessions({"model": target.session(onnx_model)}, inputs, settings)["model"].median_s
