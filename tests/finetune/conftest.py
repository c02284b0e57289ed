"""A tiny classifier and its rank-1 dwsep compression, shared by the fine-tuning tests."""

from __future__ import annotations

import pytest
import torch
from ranks import trained_tiny  # the model the multi-process scenarios build too

from convslim import apply, plan, prepare
from convslim.inputs.data import ArrayData


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # every fine-tuning test: tiny tensors (``tests/conftest.py``)
    yield


@pytest.fixture
def tiny():
    return trained_tiny()


@pytest.fixture
def tiny_data(tiny):
    x = torch.randn(96, 3, 16, 16)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    return ArrayData(x, y, "tiny")


@pytest.fixture
def tiny_compressed(tiny):
    example = (torch.randn(1, 3, 16, 16),)
    prepared = prepare(tiny, example)
    p = plan(prepared, to="dwsep", rank=1)
    return prepared, p, apply(prepared, p)
