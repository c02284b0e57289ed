"""Conversion forms, one file each (math in its docstring), in a registry keyed by the string the CLI takes
(``--to dwsep`` ↔ ``convert/dwsep.py``); ``base`` holds the contract every form implements.

Example:
    >>> from convslim.convert import get_form
    >>> get_form("dwsep").name
    'dwsep'
"""

from convslim.convert import dwsep, grouped, octave, spatial  # noqa: F401  (each module registers itself)
from convslim.convert.base import ConvSite, Cost, Form, Option, dense_cost
from convslim.convert.registry import FORMS, get_form, register_form

__all__ = ["FORMS", "ConvSite", "Cost", "Form", "Option", "dense_cost", "get_form", "register_form"]
