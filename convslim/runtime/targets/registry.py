"""The registry of runtime targets (see ``convslim.runtime.targets``)."""

from __future__ import annotations

from convslim.core.registry import register
from convslim.errors import UsageError
from convslim.runtime.targets.base import Target

_TARGETS: dict[str, Target] = {}


def register_target(target: Target, *, replace: bool = False) -> Target:
    """Add ``target`` under ``target.name`` (users may register their own targets). A name already taken is an
    error unless ``replace=True`` says the new target is meant to take its place (as ``register_form``)."""
    return register(_TARGETS, target.name, target, "runtime target", replace=replace)


def get_target(name: str | Target) -> Target:
    """The registered target called ``name``; an unknown name is a usage error listing the known ones."""
    if isinstance(name, Target):
        return name
    if name not in _TARGETS:
        raise UsageError(f"--runtime {name!r}: unknown runtime target; known: {', '.join(target_names())}")
    return _TARGETS[name]


def target_names() -> list[str]:
    return sorted(_TARGETS)


def available_target(name: str | Target) -> Target:
    """``get_target`` that also refuses a target this machine cannot run, saying why."""
    target = get_target(name)
    reason = target.unavailable()
    if reason:
        raise UsageError(f"--runtime {target.name}: not available here ({reason}); use --runtime cpu")
    return target
