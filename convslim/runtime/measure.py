"""Latency of exported models on a target at each batch size: one timer run per batch size with every model
in it (``timing.time_sessions``), so all models share the machine's state alike.

Example:
    >>> speed = measure_speed("original.onnx", "model.onnx", (torch.randn(1, 3, 32, 32),), (1, 32))
    >>> speed["32"]["speedup"], speed["32"]["speedup_iqr"], speed["32"]["runs"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from convslim.runtime.targets import get_target
from convslim.runtime.timing import DEFAULT_TIMING, TimingSettings, compare, random_inputs, time_sessions

NOISY_SPREAD = 0.10
NOISY_WARNING = "timing spread above 10 %: the machine was busy; treat this speedup with care"


def measure_models(
    models: dict[str, str | Path | bytes],
    example_inputs: tuple,
    batch_sizes: Sequence[int],
    target="cpu",
    settings: TimingSettings = DEFAULT_TIMING,
    progress: bool = False,
) -> dict[str, dict]:
    """Per batch size: ``{name: Timing}`` for every model, timed together on ``target``."""
    target = get_target(target)
    sessions = {name: target.session(model, settings.threads) for name, model in models.items()}
    results = {}
    for batch in tqdm(batch_sizes, desc=f"timing ({target.name})", disable=not progress, leave=False):
        results[str(batch)] = time_sessions(sessions, random_inputs(example_inputs, batch), settings)
    return results


def measure_speed(
    original_onnx: str | Path,
    compressed_onnx: str | Path,
    example_inputs: tuple,
    batch_sizes: Sequence[int],
    target="cpu",
    settings: TimingSettings = DEFAULT_TIMING,
) -> dict:
    """Median latency of both models at each batch size, the speedup with its per-round spread, and the runs."""
    pair = {"original": original_onnx, "compressed": compressed_onnx}
    timed = measure_models(pair, example_inputs, batch_sizes, target, settings)
    results = {}
    for batch, t in timed.items():
        entry = {
            "latency_ms_original": t["original"].median_s * 1e3,
            "latency_ms_compressed": t["compressed"].median_s * 1e3,
            **compare(t["original"], t["compressed"]),
            "spread_original": t["original"].spread,
            "spread_compressed": t["compressed"].spread,
        }
        if max(entry["spread_original"], entry["spread_compressed"]) > NOISY_SPREAD:
            entry["warning"] = NOISY_WARNING
        results[batch] = entry
    return results
