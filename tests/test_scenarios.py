"""Scenarios through the whole pipeline: a form the user registers, a model with two inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convslim
from convslim.convert import FORMS, Form
from convslim.core import ConvSite, Cost, dense_cost
from convslim.errors import UsageError


class HalfConv(nn.Module):
    """The trained conv as two convs over the two halves of its input channels, summed (exact)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.half = conv.in_channels // 2
        self.low = _part(conv, slice(0, self.half), bias=conv.bias is not None)
        self.high = _part(conv, slice(self.half, conv.in_channels), bias=False)

    def forward(self, x):
        return self.low(x[:, : self.half]) + self.high(x[:, self.half :])


@torch.no_grad()
def _part(conv: nn.Conv2d, cols: slice, bias: bool) -> nn.Conv2d:
    part = nn.Conv2d(
        cols.stop - cols.start, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=bias
    )
    part.weight.copy_(conv.weight[:, cols])
    if bias:
        part.bias.copy_(conv.bias)
    return part


class HalvesForm(Form):
    name = "test-halves"

    def settings_from_options(self, site: ConvSite, options: dict) -> dict:
        return {}

    def supports(self, site: ConvSite, setting: dict) -> str | None:
        conv = site.conv
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.in_channels < 2:
            return "needs a groups=1 conv with at least 2 input channels"
        return None

    def cost(self, site: ConvSite, setting: dict) -> Cost:
        return dense_cost(site)

    def convert(self, conv: nn.Conv2d, setting: dict) -> nn.Module:
        return HalfConv(conv)


@pytest.fixture
def halves_form():
    form = convslim.register_form(HalvesForm())
    yield form
    FORMS.pop(form.name)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.b(F.relu(self.a(x))).mean((2, 3)))


def test_user_form_plan_apply_export_load(halves_form, tmp_path):
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    plan = convslim.plan(model, x, to=halves_form.name)
    assert [d.name for d in plan.rewritten] == ["a", "b"]
    result = convslim.compress(model, x, plan=plan, out_dir=tmp_path / "out", measure_speed=False)
    assert result.report.passed
    assert isinstance(result.model.get_submodule("b"), HalfConv)
    reloaded = convslim.load_compressed(Net(), x, tmp_path / "out")
    batch = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch), result.model(batch))
        torch.testing.assert_close(reloaded(batch), model(batch), atol=1e-5, rtol=1e-5)


def test_registering_a_taken_name_needs_replace(halves_form):
    with pytest.raises(UsageError, match="already registered"):
        convslim.register_form(HalvesForm())
    again = HalvesForm()
    assert convslim.register_form(again, replace=True) is again and FORMS[again.name] is again


def test_a_user_form_names_its_graph_pass_and_rewrite_runs_it(tmp_path):
    from convslim.passes import GRAPH_PASSES, register_graph_pass

    seen = []

    def count_halves(module, decisions, notes):
        seen.append([d.name for d in decisions])
        notes.append(f"halves: {len(decisions)} layer(s)")
        return module, decisions

    class NamedPassForm(HalvesForm):
        name = "test-halves-pass"
        graph_pass = "test-count-halves"

    form = convslim.register_form(NamedPassForm())
    try:
        model, x = Net().eval(), torch.randn(1, 3, 8, 8)
        plan = convslim.plan(model, x, to=form.name)
        with pytest.raises(UsageError, match="graph pass 'test-count-halves' is not registered"):
            convslim.apply(model, plan, x)
        register_graph_pass("test-count-halves", count_halves)
        with pytest.raises(UsageError, match="already registered"):
            register_graph_pass("test-count-halves", count_halves)
        notes: list[str] = []
        convslim.apply(model, plan, x, notes=notes)
        assert seen == [["a", "b"]] and "halves: 2 layer(s)" in notes
    finally:
        FORMS.pop(form.name)
        GRAPH_PASSES.pop("test-count-halves", None)


class TwoInputs(nn.Module):
    """Two images through their own stems, added, then a shared conv."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 16, 3, padding=1)
        self.right = nn.Conv2d(1, 16, 3, padding=1)
        self.joint = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, image, depth):
        y = F.relu(self.left(image) + self.right(depth))
        return self.fc(F.relu(self.joint(y)).mean((2, 3)))


def test_two_input_model_compresses_exports_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    inputs = (torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16))
    result = convslim.compress(
        model, inputs, to="dwsep", rank=1, out_dir=tmp_path / "out", measure_speed=False
    )
    assert result.report.passed  # ONNX Runtime, fed both inputs, matches PyTorch
    assert {d.name for d in result.plan.rewritten} >= {"left", "joint"}
    reloaded = convslim.load_compressed(TwoInputs(), inputs, tmp_path / "out")
    batch = (torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*batch), result.model(*batch))
