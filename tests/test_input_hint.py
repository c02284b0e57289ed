"""When the model does not run at --input-shape, the error names a size it does run at (declared or found)."""

from __future__ import annotations

import torch

from convslim.cli import main
from convslim.inputs.hint import declared_input_size, input_size_hint
from convslim.models.zoo_special import FixedSize


class Undeclared(FixedSize):
    input_size = None


def test_declared_size_is_named_in_the_cli_error(tmp_path, capsys):
    path = tmp_path / "fixed.pt"
    torch.save(FixedSize().state_dict(), path)
    arch = "convslim.models.zoo_special:FixedSize"
    code = main(["inspect", str(path), "--arch", arch, "--input-shape", "1,3,64,64"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not run on inputs of shape 1x3x64x64" in err
    assert "declares input_size (3, 32, 32): try --input-shape 1,3,32,32" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_undeclared_size_is_found_by_trying_common_sizes():
    hint = input_size_hint(Undeclared(), (torch.randn(1, 3, 64, 64),))
    assert hint == " It runs at 32x32: try --input-shape 1,3,32,32"


def test_declarations_are_read_from_attributes_and_configs():
    model = torch.nn.Conv2d(3, 3, 1)
    assert declared_input_size(model) is None
    model.default_cfg = {"input_size": (3, 224, 224)}
    assert declared_input_size(model) == ((3, 224, 224), "default_cfg['input_size']")
    model.img_size = 96
    assert declared_input_size(model) == ((96, 96), "img_size")


def test_no_hint_for_a_model_that_runs_at_no_common_size():
    class Never(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("never runs")

    assert input_size_hint(Never(), (torch.randn(1, 3, 8, 8),)) == ""
