"""Stage 1 lowers every rewritten layer's output error, by least squares (dwsep) or gradient (others)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from convslim.finetune.affine import linear_heads, unwrap_all, wrap_all
from convslim.finetune.reconstruct import reconstruct


def test_dwsep_layers_refit_by_least_squares(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    names = [d.name for d in p.rewritten]
    assert len(names) == 3
    rows, heads = reconstruct(prepared.traced.module, student, names, list(tiny_data.batches(32)))
    assert [r["layer"] for r in rows] == names
    for i, row in enumerate(rows):
        assert row["method"].startswith("least-squares")
        assert row["error_after"] < row["error_before"], row
        # past the first layer the student's inputs differ from the teacher's, and refitting corrects that
        assert i == 0 or row["error_after"] < 0.9 * row["error_before"], row
    assert all(heads[n] for n in names)


class HandMade(nn.Module):
    """A replacement that does not end in a 1x1 conv: 1x1 then a depthwise 3x3 (gradient path only)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.mix = nn.Conv2d(cin, cout, 1, bias=False)
        self.spatial = nn.Conv2d(cout, cout, 3, padding=1, groups=cout)

    def forward(self, x):
        return self.spatial(self.mix(x))


def test_hand_made_replacement_takes_gradient_steps(tiny, tiny_data):
    teacher = copy.deepcopy(tiny).eval()
    student = copy.deepcopy(tiny).eval()
    student.block[0] = HandMade(8, 16)
    assert linear_heads(student.block[0], torch.randn(2, 8, 4, 4)) is None
    rows, heads = reconstruct(teacher, student, ["block.0"], list(tiny_data.batches(32)))
    assert rows[0]["method"] == "gradient"
    assert rows[0]["error_after"] < rows[0]["error_before"]
    assert heads["block.0"] == [student.block[0].spatial]  # no heads to solve for, but a BN folds into it


def test_batchnorm_wrapper_folds_back_exactly(tiny_compressed, tiny_data):
    prepared, p, student = tiny_compressed
    names = [d.name for d in p.rewritten]
    _, heads = reconstruct(prepared.traced.module, student, names, list(tiny_data.batches(32)))
    x = tiny_data.x[:8]
    before = student(x)
    wrapped = wrap_all(student, heads, list(tiny_data.batches(32)), "cpu")
    assert wrapped == names
    with torch.no_grad():  # a BN that is not the identity, so the fold has something to do
        for n in names:
            student.get_submodule(n).bn.weight.mul_(1.7)
            student.get_submodule(n).bn.bias.add_(0.3)
    student.eval()
    wrapped_out = student(x)
    assert not torch.allclose(wrapped_out, before)
    unwrap_all(student, wrapped)
    assert type(student.get_submodule(names[0])).__name__ == "DepthwiseSeparableConv"
    assert torch.allclose(student(x), wrapped_out, atol=1e-5)


def test_spatial_replacement_trains_with_a_batchnorm_that_folds_into_its_last_conv():
    from convslim.convert.spatial import convert_spatial
    from convslim.finetune.affine import TrainNorm, fold_norm, output_conv

    torch.manual_seed(0)
    sep = convert_spatial(nn.Conv2d(6, 8, 3, padding=1), 4)
    x = torch.randn(16, 6, 9, 9)
    targets = output_conv(sep, x)
    assert linear_heads(sep, x) is None and targets == [sep[1]]  # no 1x1 heads; the 1×Kw conv is the output
    wrapped = TrainNorm(sep, targets, 8)
    with torch.no_grad():
        wrapped.bn.weight.uniform_(0.5, 2.0)
        wrapped.bn.bias.normal_()
        wrapped.bn.running_mean.normal_()
        wrapped.bn.running_var.uniform_(0.5, 2.0)
        expected = wrapped.eval()(x)
        folded = fold_norm(wrapped)
        assert torch.allclose(folded(x), expected, atol=1e-5)
