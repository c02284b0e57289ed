"""Form options come from the form registry: 0 is never "absent", every value round-trips into the report or is
refused in one line, and a new form's options reach the CLI without a CLI edit (issues 12 and 13)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convslim
from convslim.cli import main
from convslim.cli.args import form_options, registry_options
from convslim.cli.commands import build_parser
from convslim.convert import FORMS, register_form
from convslim.convert.base import Cost, Form, Option, dense_cost, whole_at_least
from convslim.errors import UsageError
from convslim.report.report import Report
from tests.cli_models import Small

X = torch.randn(1, 3, 16, 16)
BUILTIN = {name: FORMS[name] for name in ("dwsep", "spatial", "grouped", "octave")}


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    return convslim.prepare(Small(width=16), X)


def values_for(option: Option):
    if option.type is bool:
        return st.booleans()
    if option.choices:
        return st.sampled_from([*option.choices, "nonsense"])
    numbers = st.sampled_from([0, 1, 2, 3, 4, 16, -1, 0.5, 0.25, 1.5, 0.999, 1.0])
    return numbers if option.type is float else st.sampled_from([0, 1, 2, 3, 4, 8, -2])


def _argv(option: Option, value) -> list[str]:
    if option.type is bool:
        return [option.flag if value else "--no-" + option.flag[2:]]
    return [option.flag, str(value)]


@st.composite
def form_and_value(draw):
    form = draw(st.sampled_from(sorted(BUILTIN)))
    option = draw(st.sampled_from(BUILTIN[form].options))
    return form, option, draw(values_for(option))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=form_and_value())
def test_every_form_option_round_trips_into_the_report_or_is_refused(prepared, case):
    form, option, value = case
    argv = [
        "plan",
        "m.pt",
        "--input-shape",
        "1,3,16,16",
        "--out",
        "p.json",
        "--to",
        form,
        *_argv(option, value),
    ]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # argparse refused it (a choice not offered): exit 2 in one line
        assert option.choices and value not in option.choices
        return
    given_options = form_options(args)
    assert given_options[option.name] == value  # 0 and False are passed on, never dropped
    try:
        plan = convslim.plan(prepared, to=form, **given_options)
    except UsageError as exc:
        assert option.flag in str(exc)
        return
    report = Report.from_plan(plan, "fx", {})
    assert report.options[option.name] == value
    assert set(report.options) == {
        o.name for o in BUILTIN[form].options
    }  # every option in force, defaults too


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--to", "dwsep", "--rank", "0"], "--rank for dwsep must be a whole number ≥ 1"),
        (["--to", "grouped", "--groups", "0"], "--groups for grouped must be a whole number ≥ 1"),
        (["--to", "grouped", "--mix", "--width", "0"], "--width for grouped must be"),
        (["--to", "spatial", "--rank-multiple", "0"], "--rank-multiple for spatial must be"),
        (["--to", "dwsep", "--groups", "4"], "--groups does not apply to form dwsep"),
        (["--to", "dwsep", "--rank", "nan"], "must be a number (not NaN)"),
        (["--to", "auto", "--target-macs", "0.5", "--rank", "2"], "--rank: with a budget"),
    ],
)
def test_zero_and_strays_are_refused_not_replaced(tmp_path, capsys, flags, message):
    weights = tmp_path / "small.pt"
    torch.save(Small().state_dict(), weights)
    argv = ["plan", str(weights), "--arch", "tests/cli_models.py:small", "--input-shape", "1,3,16,16"]
    assert main([*argv, *flags, "--out", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "plan.json").exists()


def test_octave_alpha_zero_means_zero(prepared):
    plan = convslim.plan(prepared, to="octave", alpha=0)
    assert plan.options["alpha"] == 0
    # no channel at half resolution: every layer keeps its dense cost (not the default alpha's 0.5 saving)
    assert all(d.setting["alpha"] == 0 and d.macs_after == d.macs_before for d in plan.rewritten)
    assert plan.rewritten


class Halve(Form):
    """A toy form: keeps the conv as it is, but declares an option of its own."""

    name = "toy-halve"
    options = (Option("toy_knob", int, "toy-halve: a knob", 3, check=whole_at_least(1)),)

    def settings_from_options(self, site, options):
        return {"knob": options["toy_knob"]}

    def supports(self, site, setting):
        return None

    def cost(self, site, setting) -> Cost:
        dense = dense_cost(site)
        return Cost(dense.params, math.ceil(dense.macs / setting["knob"]))

    def convert(self, conv, setting):
        return torch.nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
        ).requires_grad_(False)


@pytest.fixture
def toy_form():
    register_form(Halve())
    yield FORMS["toy-halve"]
    FORMS.pop("toy-halve")


def test_a_new_form_reaches_the_cli_without_a_cli_edit(tmp_path, capsys, toy_form):
    assert "toy_knob" in registry_options()
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    help_text = capsys.readouterr().out
    assert "--toy-knob" in help_text and "toy-halve: a knob (default toy-halve: 3)" in help_text
    weights = tmp_path / "small.pt"
    torch.save(Small().state_dict(), weights)
    out = tmp_path / "plan.json"
    argv = ["plan", str(weights), "--arch", "tests/cli_models.py:small", "--input-shape", "1,3,16,16"]
    assert main([*argv, "--to", "toy-halve", "--toy-knob", "5", "--out", str(out)]) == 0
    plan = convslim.Plan.from_json(out.read_text())
    assert plan.options == {"toy_knob": 5}
    assert {d.setting["knob"] for d in plan.rewritten} == {5}
