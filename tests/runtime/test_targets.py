"""The runtime target registry: names the CLI takes, unknown → usage error listing them, absent GPUs skipped
with a reason."""

from __future__ import annotations

import pytest

from convslim.errors import UsageError
from convslim.runtime import available_target, get_target, register_target, target_names
from convslim.runtime.targets.base import Target


def test_known_targets():
    assert {"cpu", "cpu-int8", "cuda", "tensorrt"} <= set(target_names())
    assert get_target("cpu-int8").precision == "int8" and get_target("cpu").precision == "fp32"
    assert get_target("cpu").unavailable() is None


def test_unknown_target_lists_known_ones():
    with pytest.raises(UsageError) as info:
        get_target("npu")
    for name in ("cpu", "cpu-int8", "cuda", "tensorrt"):
        assert name in str(info.value)


def test_a_taken_name_needs_replace_as_for_forms():
    class Again(Target):
        name = "cpu"

    with pytest.raises(UsageError, match="already registered .* pass replace=True"):
        register_target(Again())
    original = get_target("cpu")
    again = Again()
    try:
        assert register_target(again, replace=True) is again and get_target("cpu") is again
    finally:
        register_target(original, replace=True)
    assert get_target("cpu") is original


@pytest.mark.parametrize("name", ["cuda", "tensorrt"])
def test_absent_gpu_targets_say_why(name):
    reason = get_target(name).unavailable()
    if reason is None:
        pytest.skip(f"{name} is available on this machine")
    assert "ExecutionProvider" in reason or "GPU" in reason
    with pytest.raises(UsageError, match=f"--runtime {name}: not available here"):
        available_target(name)


def test_cache_keys_differ_by_precision():
    assert get_target("cpu").cache_key != get_target("cpu-int8").cache_key
