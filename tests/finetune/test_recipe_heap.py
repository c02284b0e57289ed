"""The fine-tune runs with glibc malloc's thresholds raised (``core.heap``), says so, and trains the same."""

from __future__ import annotations

import torch

from convslim.core.heap import DESCRIBED, why_not_retained
from convslim.finetune import finetune


def test_the_heap_setting_is_reported_and_changes_no_weight(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    trained = {}
    for retain in (True, False):
        hook = finetune(tiny_data, tiny_data, steps=4, retain_heap=retain, progress=False)
        model, report = hook(prepared, student, p)
        trained[retain] = model.state_dict()
        if retain:
            assert report["heap"] == (why_not_retained() or DESCRIBED)
        else:
            assert "retain_heap off" in report["heap"]
    for key, value in trained[True].items():
        assert torch.equal(value, trained[False][key]), key
