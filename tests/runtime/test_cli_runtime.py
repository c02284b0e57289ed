"""The runtime flags end to end on a small digits CNN: --runtime choices from the registry, --int8 without
images → exit 2 saying what to pass, int8 report with the four models, --static-shape and --opset, original.onnx
written and parity-checked."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from convslim.cli import main
from convslim.models.digits import digits_cnn
from convslim.runtime import get_target
from convslim.runtime.export import fixed_input_shape, model_opset

ARCH = [
    "--arch",
    "convslim.models.digits:digits_cnn",
    "--arch-kwargs",
    '{"width": 8}',
    "--input-shape",
    "1,1,16,16",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-runtime")
    torch.manual_seed(0)
    torch.save(digits_cnn(width=8).state_dict(), folder / "digits.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.random((160, 1, 16, 16), dtype=np.float32))
    return folder


def _run(files, out, *flags) -> int:
    return main(
        [
            "compress",
            str(files / "digits.pt"),
            *ARCH,
            "--to",
            "dwsep",
            "--rank",
            "1",
            "--out",
            str(out),
            "--quiet",
            *flags,
        ]
    )


def test_unknown_runtime_lists_known(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _run(files, tmp_path / "out", "--runtime", "npu")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "cpu-int8" in err and "tensorrt" in err
    assert not (tmp_path / "out").exists()


def test_int8_without_images_says_what_to_pass(files, tmp_path, capsys):
    assert _run(files, tmp_path / "out", "--int8", "--no-speed") == 2
    err = capsys.readouterr().err
    assert "--data" in err and "--calib-data" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cuda_absent_is_refused_with_its_reason(files, tmp_path, capsys):
    reason = get_target("cuda").unavailable()
    if reason is None:
        pytest.skip("CUDA is available here")
    assert _run(files, tmp_path / "out", "--runtime", "cuda", "--no-speed") == 2
    assert reason in capsys.readouterr().err


def test_int8_report_has_four_models(files, tmp_path, capsys):
    out = tmp_path / "out"
    code = _run(files, out, "--int8", "--calib-data", str(files / "calib.npz"), "--batch-sizes", "2")
    terminal = capsys.readouterr().out
    assert code == 0, terminal
    report = json.loads((out / "report.json").read_text())
    deploy = report["deploy"]
    assert deploy["runtime"] == "cpu-int8" and deploy["precision"] == "int8"
    acc = deploy["accuracy"]
    assert acc["metric"] == "agreement with original_fp32" and acc["original_fp32"] == 1.0
    assert all(0.0 <= acc[m] <= 1.0 for m in ("original_int8", "compressed_fp32", "compressed_int8"))
    assert "held back" in acc["data"]
    entry = deploy["speed"]["2"]
    assert set(entry["latency"]) == {"original_fp32", "original_int8", "compressed_fp32", "compressed_int8"}
    assert set(entry["speedup"]) == {"vs_original_fp32", "vs_original_int8"}
    assert {"speedup", "speedup_iqr", "rounds", "runs"} <= set(
        entry["speedup"]["vs_original_int8"]["compressed_int8"]
    )
    for name in ("model.onnx", "original.onnx", "model.int8.onnx", "original.int8.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)))
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == deploy["onnx_sha256"][name]
    assert set(deploy["int8"]) == {"original", "compressed"}
    assert "agreement with original_fp32" in terminal and "vs orig int8" in terminal
    assert deploy["recommended"]["file"] in ("model.onnx", "model.int8.onnx")
    assert f"deploy {deploy['recommended']['file']}: " in terminal


def test_static_shape_and_opset(files, tmp_path):
    out = tmp_path / "out"
    assert (
        _run(files, out, "--static-shape", "--opset", "18", "--input-shape", "4,1,16,16", "--no-speed") == 0
    )
    report = json.loads((out / "report.json").read_text())
    for name in ("model.onnx", "original.onnx"):
        model = onnx.load(str(out / name))
        assert fixed_input_shape(model) == [4, 1, 16, 16] and model_opset(model) == 18
    parity = report["parity"]["original_onnx_vs_torch"]
    assert parity["passed"] and parity["n_batches"] >= 1
    assert report["deploy"]["export"] == {"opset": 18, "static_shape": True}
