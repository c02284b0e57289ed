"""The one exporter: --opset honoured (or refused), static shapes run at that shape only, fallback reported."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from convslim.errors import UsageError
from convslim.runtime import ExportError, ExportSettings, export_bytes, export_model, get_target
from convslim.runtime.export import fixed_input_shape, model_opset


@pytest.mark.parametrize("opset", [18, 20])
def test_opset_honoured(tiny, tmp_path, opset):
    path = tmp_path / "m.onnx"
    export_model(tiny, (torch.randn(1, 3, 12, 12),), path, ExportSettings(opset=opset))
    assert model_opset(onnx.load(str(path))) == opset


def test_opset_the_exporter_cannot_make_is_refused(tiny, tmp_path):
    with pytest.raises(ExportError, match="--opset 13"):
        export_model(tiny, (torch.randn(1, 3, 12, 12),), tmp_path / "m.onnx", ExportSettings(opset=13))
    with pytest.raises(UsageError, match="--opset 3"):
        export_model(tiny, (torch.randn(1, 3, 12, 12),), tmp_path / "m.onnx", ExportSettings(opset=3))


def test_static_shape_runs_at_its_shape_and_refuses_another(tiny, tmp_path):
    path = tmp_path / "static.onnx"
    exported = export_model(tiny, (torch.randn(4, 3, 12, 12),), path, ExportSettings(static_shape=True))
    assert not exported.dynamic_batch and exported.fallback is None and exported.note() is None
    assert fixed_input_shape(onnx.load(str(path))) == [4, 3, 12, 12]
    session = get_target("cpu").session(path)
    x = torch.randn(4, 3, 12, 12)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert out.shape == (4, 10)
    torch.testing.assert_close(torch.from_numpy(out), tiny(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        session.run(None, {session.get_inputs()[0].name: torch.randn(2, 3, 12, 12).numpy()})


def test_dynamic_batch_by_default(tiny, tiny_onnx):
    dims = fixed_input_shape(onnx.load(str(tiny_onnx)))
    assert isinstance(dims[0], str) and dims[1:] == [3, 12, 12]


class FixedBatch(nn.Module):
    """Adds a (2, 3) buffer: only batch 2 broadcasts, so a dynamic batch cannot be exported."""

    def __init__(self):
        super().__init__()
        self.register_buffer("c", torch.ones(2, 3))

    def forward(self, x):
        return x + self.c


def test_fallback_to_fixed_shape_is_reported(tmp_path):
    exported = export_model(FixedBatch(), (torch.randn(2, 3),), tmp_path / "m.onnx")
    assert not exported.dynamic_batch
    assert "Constraints violated" in exported.fallback
    assert "fixed input shape 2x3" in exported.note()


def test_export_bytes_are_deterministic(tiny):
    x = (torch.randn(1, 3, 12, 12),)
    assert export_bytes(tiny, x) == export_bytes(tiny, x)
