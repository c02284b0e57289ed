"""A tiny classifier and its rank-1 dwsep compression, shared by the fine-tuning tests."""

from __future__ import annotations

import pytest
import torch
from ranks import trained_tiny  # the model the multi-process scenarios build too

from convslim import apply, plan, prepare
from convslim.inputs.data import ArrayData


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: threading only adds overhead, and on a busy 2-core machine it is 10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
