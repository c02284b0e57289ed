"""Candidates: a form's typed rejection of a grid option is a skip reason; any other exception is a bug and
surfaces instead of looking like a decision."""

from __future__ import annotations

import pytest
from torch import nn

from convslim.convert import FORMS, Form
from convslim.core import ConvSite, Cost
from convslim.errors import UsageError
from convslim.planner.candidates import candidates_for

SITE = ConvSite("c", nn.Conv2d(8, 8, 3, padding=1), [((8, 8, 8), (8, 8, 8))])


class Raising(Form):
    name = "test-raising"

    def __init__(self, error: Exception):
        self.error = error

    def settings_from_options(self, site: ConvSite, options: dict) -> dict:
        raise self.error

    def cost(self, site: ConvSite, setting: dict) -> Cost:
        return Cost(0, 0)


@pytest.fixture
def register():
    def add(form: Form) -> Form:
        FORMS[form.name] = form
        return form

    yield add
    FORMS.pop(Raising.name, None)


def test_typed_error_becomes_the_reason(register):
    register(Raising(UsageError("--widgets must be even")))
    found, reasons = candidates_for(SITE, [Raising.name], grid={Raising.name: [{}]})
    assert found == [] and reasons == [f"{Raising.name}: UsageError: --widgets must be even"]


def test_a_bug_in_a_form_is_not_a_skip_reason(register):
    register(Raising(KeyError("rank")))
    with pytest.raises(KeyError, match="rank"):
        candidates_for(SITE, [Raising.name], grid={Raising.name: [{}]})


def test_no_saving_is_a_reason():
    found, reasons = candidates_for(SITE, ["dwsep"], grid={"dwsep": [{"rank": 8}]})
    assert found == [] and reasons and "no saving" in reasons[0]
