"""Registry of conversion forms, keyed by the string the CLI takes (``--to dwsep`` ↔ ``convert/dwsep.py``).

Example:
    >>> from convslim.convert import get_form
    >>> get_form("dwsep").name
    'dwsep'
"""

from __future__ import annotations

from convslim.convert.base import ConvSite, Cost, Form, Option, dense_cost
from convslim.errors import UsageError

FORMS: dict[str, Form] = {}


def register_form(form: Form, *, replace: bool = False) -> Form:
    """Add ``form`` to the registry under ``form.name`` (users may register their own forms). A name already
    taken is an error unless ``replace=True`` says the new form is meant to take its place."""
    if not form.name:
        raise UsageError(f"{type(form).__name__} has no name: set the class attribute `name`")
    if form.name in FORMS and not replace:
        raise UsageError(
            f"a form named {form.name!r} is already registered ({type(FORMS[form.name]).__name__}); "
            "pick another name or pass replace=True"
        )
    FORMS[form.name] = form
    return form


def get_form(name: str) -> Form:
    try:
        return FORMS[name]
    except KeyError:
        known = ", ".join(sorted(FORMS)) or "none"
        raise UsageError(f"unknown form {name!r}: choose one of {known}") from None


def _register_builtin_forms() -> None:
    from convslim.convert import dwsep  # noqa: F401  (each module registers itself)

    for optional in ("spatial", "grouped", "octave"):
        try:
            __import__(f"convslim.convert.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"convslim.convert.{optional}":
                raise


_register_builtin_forms()

__all__ = ["FORMS", "ConvSite", "Cost", "Form", "Option", "dense_cost", "get_form", "register_form"]
