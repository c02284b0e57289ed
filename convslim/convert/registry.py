"""The registry of conversion forms, keyed by the string the CLI takes (``--to dwsep`` ↔ ``convert/dwsep.py``).
Runtime targets (``convslim.runtime.targets.registry``) and graph passes (``convslim.passes.form_passes``) are
registered the same way: a name already taken is a ``UsageError`` unless ``replace=True``.
"""

from __future__ import annotations

from convslim.convert.base import Form
from convslim.core.registry import register
from convslim.errors import UsageError

FORMS: dict[str, Form] = {}


def register_form(form: Form, *, replace: bool = False) -> Form:
    """Add ``form`` to the registry under ``form.name`` (users may register their own forms). A name already
    taken is an error unless ``replace=True`` says the new form is meant to take its place."""
    return register(FORMS, form.name, form, "form", replace=replace)


def get_form(name: str) -> Form:
    try:
        return FORMS[name]
    except KeyError:
        known = ", ".join(sorted(FORMS)) or "none"
        raise UsageError(f"unknown form {name!r}: choose one of {known}") from None
