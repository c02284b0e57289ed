"""Parity against the original's own floor, and naming the op where ONNX Runtime departs from PyTorch."""

from __future__ import annotations

import onnx
import torch
from torch import nn

from convslim.runtime.export import export_onnx, export_program
from convslim.verify.diagnose import divergence_note, first_divergence
from convslim.verify.parity import judge_with_floor, onnx_parity


def _parity(err, tol):
    return {"max_abs_err": err, "tolerance": tol, "passed": err <= tol}


def test_floor_lifts_the_tolerance_only_above_it():
    judged = judge_with_floor(_parity(0.21, 0.14), _parity(0.1, 0.14))
    assert judged["passed"] and not judged["passed_tolerance"]
    assert judged["allowed_err"] == 0.4 and judged["floor_max_abs_err"] == 0.1
    tight = judge_with_floor(_parity(2e-5, 1e-5), _parity(1e-9, 1e-5))
    assert not tight["passed"] and tight["allowed_err"] == 1e-5  # a clean original: the tolerance rules


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(nn.functional.hardswish(self.a(x)))


def test_first_divergence_names_the_op_the_runtime_gets_wrong(tmp_path):
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    program, _ = export_program(model, (x,))
    proto = export_onnx(program, (x,), tmp_path / "m.onnx")
    assert first_divergence(program, tmp_path / "m.onnx", (x,), 1e-4) is None  # a faithful runtime
    swish = next(n for n in proto.graph.node if n.op_type == "HardSwish")
    swish.op_type = "HardSigmoid"  # a "runtime" that computes the wrong activation
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    found = first_divergence(program, tmp_path / "bad.onnx", (x,), 1e-4)
    assert found["value"] == swish.output[0] and found["onnx_op"] == "HardSigmoid"
    assert "hardswish" in found["aten"]
    parity = onnx_parity(tmp_path / "bad.onnx", model, [(x,)])
    note = divergence_note("original", parity, found)
    assert "not the rewrite" in note and "HardSigmoid" in note
