"""Shared fixtures. Tests that need the real checkpoints in ../shared/data skip with a clear message without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

MACHINE_THREADS = torch.get_num_threads()
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs on two worker processes (pyproject's `-n 2`): one torch thread each, not two each fighting
    # over the same cores (8:02 -> 3:42 on 2 cores)
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """The `timing` tests all go to one worker (`--dist loadgroup`), so they run one at a time."""
    for item in items:
        if item.get_closest_marker("timing"):
            item.add_marker(pytest.mark.xdist_group("timing"))


SHARED_DATA = (
    Path(os.environ.get("CONVSLIM_SHARED", Path(__file__).resolve().parents[1].parent / "shared")) / "data"
)


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(
            f"{path} not found: these tests need ../shared/data beside the repository (set CONVSLIM_SHARED)"
        )
    return path


@pytest.fixture
def resnet20_path() -> Path:
    return shared_file("resnet20-12fca82f.th")


@pytest.fixture
def resnet32_path() -> Path:
    return shared_file("resnet32-d509ac18.th")


@pytest.fixture
def one_thread():
    """torch on one thread for the test: on tiny tensors threading only adds overhead, and on a busy 2-core
    machine it is 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def fake_timer(request, monkeypatch):
    """Model timings computed from the graph instead of measured (``tests/fake_timer.py``), for every test but
    those marked ``timing``: planning on a budget, sweeping and auto-planning assert their outcome whatever the
    machine's load, and nothing waits on a stopwatch. Real timings: ``pytest -m timing`` and benchmarks/."""
    if request.node.get_closest_marker("timing"):
        threads = torch.get_num_threads()
        torch.set_num_threads(MACHINE_THREADS)  # time as a user's process would, on every core
        yield None
        torch.set_num_threads(threads)
        return
    from convslim.runtime import timing
    from tests.fake_timer import FakeClock

    clock = FakeClock()
    monkeypatch.setattr(timing, "CLOCK", clock)
    yield clock
