"""The timer on real ONNX Runtime sessions (``pytest -m timing``; the default run uses tests/fake_timer.py): the
clock really advances, every session gets its runs and rounds, and a model timed against itself comes out even
within the spread a busy machine allows."""

from __future__ import annotations

import pytest
import torch

from convslim.runtime import TimingSettings, export_model, measure_speed
from convslim.runtime.timing import CLOCK, Clock

pytestmark = pytest.mark.timing


def test_the_real_clock_is_in_use():
    assert type(CLOCK) is Clock


def test_measure_speed_times_both_models_for_real(tmp_path):
    from tests.runtime.conftest import TinyNet

    torch.manual_seed(0)
    path = tmp_path / "tiny.onnx"
    export_model(TinyNet().eval(), (torch.randn(1, 3, 12, 12),), path)
    settings = TimingSettings(seconds=0.3, min_rounds=3, min_runs=10)
    result = measure_speed(path, path, (torch.randn(1, 3, 12, 12),), (1, 8), "cpu", settings)
    for batch in ("1", "8"):
        entry = result[batch]
        assert entry["latency_ms_original"] > 0 and entry["latency_ms_compressed"] > 0
        assert entry["runs"] >= 10 and entry["rounds"] >= 3
        assert 0.3 < entry["speedup"] < 3  # the same model against itself: about 1
