"""What int8 deployment leaves behind: nothing in the working folder (ORT's symbolic shape inference saves its
temp files there when it cannot finish), the root logger as it was, and per-conv timings only in the
``DeploySettings`` of the run that made them."""

from __future__ import annotations

import logging
import os

import pytest
import torch

import convslim
from convslim.models import resnet20
from convslim.runtime.deploy import DeploySettings
from convslim.runtime.int8 import Calibration, Int8Settings

QUICK_INT8 = Int8Settings(speed_check=False, auto_exclude=False, calibration_batch=8)


def test_an_octave_int8_compress_leaves_the_working_folder_unchanged(tmp_path, monkeypatch):
    """ResNet-20 in octave form is a graph ORT's symbolic shape inference cannot finish: it used to leave
    sym_shape_infer_temp.onnx and a 1.3 MB .data file in the folder it ran from."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    deploy = DeploySettings(
        runtime="cpu-int8", calibration=Calibration(torch.randn(16, 3, 32, 32)), int8=QUICK_INT8
    )
    out = tmp_path / "out"
    result = convslim.compress(
        resnet20().eval(),
        torch.randn(1, 3, 32, 32),
        to="octave",
        out_dir=out,
        measure_speed=False,
        deploy=deploy,
    )
    notes = result.report.deploy["int8"]["compressed"]["notes"]
    assert any("symbolic shape inference failed" in n for n in notes)  # the case that wrote the files
    assert sorted(os.listdir(work)) == ["mine.txt"] and (work / "mine.txt").read_text() == "keep"
    assert (out / "model.int8.onnx").is_file()


def test_quantizing_leaves_the_root_logger_as_it_was(tiny_onnx, tmp_path):
    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    mine = Keep()
    root.addHandler(mine)
    try:
        target = convslim.runtime.get_target("cpu-int8").with_settings(QUICK_INT8)
        target.deploy(tiny_onnx, tmp_path / "model.int8.onnx", Calibration(torch.randn(16, 3, 12, 12)))
        logging.getLogger("someone.else").warning("still heard")
    finally:
        root.removeHandler(mine)
    assert (root.level, root.handlers, root.filters) == (level, handlers, filters)
    assert seen == ["still heard"]  # ORT's own chatter dropped, nobody else's


def test_one_run_times_each_kind_of_conv_once(tiny_onnx, tmp_path, monkeypatch):
    from convslim.runtime import int8_speed, int8_whole

    calls = []
    monkeypatch.setattr(int8_speed, "time_node", lambda *a: calls.append(a[1].name) or 0.7)
    monkeypatch.setattr(int8_whole, "speed_ratio", lambda *a: 1.0)
    settings = Int8Settings(speed_check=True, auto_exclude=False, calibration_batch=8)
    calibration = Calibration(torch.randn(16, 3, 12, 12))
    run = DeploySettings(runtime="cpu-int8", int8=settings, calibration=calibration)
    for name in ("a", "b"):
        run.target().deploy(tiny_onnx, tmp_path / f"{name}.int8.onnx", calibration)
    assert len(calls) == len(set(calls)) == 3 == len(run.speeds)  # stem, depthwise, pointwise: once each
    other = DeploySettings(runtime="cpu-int8", int8=settings, calibration=calibration)
    other.target().deploy(tiny_onnx, tmp_path / "c.int8.onnx", calibration)
    assert len(calls) == 6  # another run keeps its own timings


@pytest.fixture
def tiny_onnx(tmp_path):
    from convslim.runtime import export_model
    from tests.runtime.conftest import TinyNet

    torch.manual_seed(0)
    path = tmp_path / "tiny.onnx"
    export_model(TinyNet().eval(), (torch.randn(1, 3, 12, 12),), path)
    return path
