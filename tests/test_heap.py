"""glibc malloc's thresholds raised for a scope and restored after it, and left alone where they should be."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

import convslim.core.heap as heap
from convslim.core.heap import DESCRIBED, GLIBC_START, RETAINED, retained_heap, why_not_retained

ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    """Records ``mallopt`` / ``malloc_trim`` calls; ``accepts``: what mallopt returns (1: success)."""

    def __init__(self, accepts: int = 1):
        self.calls: list[tuple] = []
        self.accepts = accepts

    def mallopt(self, option, value) -> int:
        self.calls.append(("mallopt", option.value, value.value))
        return self.accepts

    def malloc_trim(self, pad) -> int:
        self.calls.append(("trim", pad.value))
        return 1


@pytest.fixture
def fake_glibc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_libc", lambda: libc)
    monkeypatch.setattr(heap.platform, "system", lambda: "Linux")
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("glibc", "2.39"))
    for name in ("GLIBC_TUNABLES", *heap.USER_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return libc


def _options(calls: list[tuple]) -> dict[int, int]:
    return {option: value for kind, *rest in calls if kind == "mallopt" for option, value in [rest]}


def test_the_thresholds_are_raised_inside_and_glibcs_start_values_set_again_after(fake_glibc):
    with retained_heap() as described:
        assert _options(fake_glibc.calls) == RETAINED
        assert not any(c[0] == "trim" for c in fake_glibc.calls)
        entered = len(fake_glibc.calls)
    assert described == DESCRIBED
    after = fake_glibc.calls[entered:]
    assert _options(after) == GLIBC_START
    assert after[-1] == ("trim", 0)  # the kept memory goes back to the system


def test_an_error_inside_the_scope_still_restores_the_start_values(fake_glibc):
    with pytest.raises(RuntimeError), retained_heap():
        raise RuntimeError("a bug in training")
    assert _options(fake_glibc.calls[len(RETAINED) :]) == GLIBC_START
    assert heap._active == 0


def test_a_nested_scope_leaves_the_outer_ones_settings_alone(fake_glibc):
    with retained_heap():
        before = len(fake_glibc.calls)
        with retained_heap() as inner:
            pass
        assert len(fake_glibc.calls) == before and inner == DESCRIBED
    assert _options(fake_glibc.calls[before:]) == GLIBC_START


@pytest.mark.parametrize(
    "variable, value",
    [("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"), ("MALLOC_ARENA_MAX", "2")],
)
def test_the_users_own_malloc_tuning_wins(fake_glibc, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with retained_heap() as described:
        pass
    assert fake_glibc.calls == [] and "environment" in described


def test_other_tunables_do_not_count_as_malloc_tuning(fake_glibc, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    assert why_not_retained() is None


def test_off_or_off_glibc_nothing_is_called(fake_glibc, monkeypatch):
    with retained_heap(enabled=False) as described:
        pass
    assert fake_glibc.calls == [] and "retain_heap off" in described
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("", ""))
    with retained_heap() as described:
        pass
    assert fake_glibc.calls == [] and "not glibc" in described


def test_a_refused_threshold_restores_the_start_values_and_says_so(fake_glibc):
    fake_glibc.accepts = 0
    with retained_heap() as described:
        assert heap._active == 0
    assert "refused" in described
    assert _options(fake_glibc.calls[-len(GLIBC_START) :]) == GLIBC_START


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+): what malloc holds, in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]  # fmt: skip


def _mallinfo() -> MallInfo2:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def _held_16_mib() -> tuple[int, int, int]:
    """(bytes mmapped for a 16 MiB tensor while it lives, heap bytes before, heap bytes after it is freed)."""
    before = _mallinfo()
    block = torch.ones(16 << 18)
    mmapped = _mallinfo().hblkhd - before.hblkhd
    arena = _mallinfo().arena
    del block
    return mmapped, arena, _mallinfo().arena


@pytest.mark.skipif(
    not (ON_GLIBC and hasattr(ctypes.CDLL(None), "mallinfo2")), reason="glibc 2.33+ malloc only"
)
def test_on_glibc_a_large_block_comes_from_the_heap_and_stays_there_inside_the_scope(monkeypatch):
    for name in ("GLIBC_TUNABLES", *heap.USER_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    with retained_heap() as described:
        mmapped, arena, after_free = _held_16_mib()
    assert described == DESCRIBED
    assert mmapped == 0 and after_free == arena >= 16 << 20  # from the heap, and kept after the free
    mmapped, _, _ = _held_16_mib()
    assert mmapped >= 16 << 20  # glibc's start values: mmapped, so unmapped again when freed
