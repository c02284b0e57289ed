"""The one rule every registry follows (forms, runtime targets, graph passes): a name is taken once, and a second
entry under it is a ``UsageError`` unless ``replace=True`` says it is meant to take the first one's place.

Example:
    >>> register(FORMS, form.name, form, "form", replace=False)
"""

from __future__ import annotations

from typing import Any, TypeVar

from convslim.errors import UsageError

T = TypeVar("T")


def register(table: dict[str, Any], name: str, entry: T, kind: str, *, replace: bool = False) -> T:
    """Put ``entry`` in ``table`` under ``name``; ``kind`` names what it is in the messages ("form")."""
    if not name:
        raise UsageError(
            f"{type(entry).__name__} has no name: set its `name` (the string users select it by)"
        )
    if name in table and not replace:
        raise UsageError(
            f"a {kind} named {name!r} is already registered ({type(table[name]).__name__}); "
            "pick another name or pass replace=True"
        )
    table[name] = entry
    return entry
