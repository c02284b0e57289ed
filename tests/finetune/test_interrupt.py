"""Ctrl-C / SIGTERM during fine-tuning: training stops, the best model so far is exported, report says so."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from convslim import compress, load_compressed
from convslim.finetune import finetune
from convslim.finetune.stopping import interruptible


class SignalAfter:
    """An iterable of (x, y) batches that sends ``sig`` to this process once ``after`` batches were taken."""

    def __init__(self, data, after, sig):
        self.data, self.after, self.sig, self.taken = data, after, sig, 0

    def __iter__(self):
        for x, y in self.data.batches(32):
            self.taken += 1
            if self.taken == self.after:
                os.kill(os.getpid(), self.sig)
            yield x, y


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_best_model(tiny, tiny_data, tmp_path, sig):
    handlers_before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    source = SignalAfter(tiny_data, after=40, sig=sig)  # past the 4 calibration batches, inside stage 2
    hook = finetune(source, tiny_data, steps=10_000, batch_size=32, progress=False)
    out = tmp_path / "out"
    example = (torch.randn(1, 3, 16, 16),)
    result = compress(tiny, example, to="dwsep", rank=1, finetune=hook, out_dir=out, measure_speed=False)
    ft = result.report.finetune
    assert ft["interrupted"] is True and ft["stopped_by"] == signal.Signals(sig).name
    assert ft["stage2_distill"]["steps"] < 100
    assert ft["progress"].startswith("stage 2: ")  # the stage the signal stopped comes first (issue 27)
    assert result.report.passed
    saved = json.loads((out / "report.json").read_text())
    assert saved["finetune"]["interrupted"] is True
    assert "INTERRUPTED" in (out / "report.md").read_text()
    reloaded = load_compressed(tiny, example, out)
    x = tiny_data.x[:4]
    assert torch.allclose(reloaded(x), result.model(x), atol=1e-5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers_before  # restored


def test_second_ctrl_c_raises():
    with interruptible() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        os.kill(os.getpid(), signal.SIGINT)
