"""CLI: end to end on the real ResNet-20, and bad inputs → exit 2, one clear line, no output folder."""

from __future__ import annotations

import json

import pytest
import torch

from convslim.cli import main
from convslim.models import resnet20
from tests.cli_models import fails_cleanly

ARCH = ["--arch", "convslim.models:resnet20", "--input-shape", "1,3,32,32"]


@pytest.fixture
def state_dict_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r20.pt"
    torch.save(resnet20().state_dict(), path)
    return path


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(
        capsys, ["compress", str(tmp_path / "nope.pt"), *ARCH, "--out", str(out)], out, "no such file"
    )


def test_truncated_file(tmp_path, capsys, state_dict_file):
    state_dict_file.write_bytes(state_dict_file.read_bytes()[:3000])
    out = tmp_path / "out"
    fails_cleanly(capsys, ["compress", str(state_dict_file), *ARCH, "--out", str(out)], out, "corrupt")


def test_torchscript_archive(tmp_path, capsys):
    path = tmp_path / "ts.pt"
    torch.jit.script(resnet20().eval()).save(str(path))
    out = tmp_path / "out"
    fails_cleanly(
        capsys, ["compress", str(path), "--input-shape", "1,3,32,32", "--out", str(out)], out, "TorchScript"
    )


def test_pickle_without_trust(tmp_path, capsys):
    path = tmp_path / "whole.pt"
    torch.save(resnet20(), path)
    out = tmp_path / "out"
    fails_cleanly(
        capsys,
        ["compress", str(path), "--input-shape", "1,3,32,32", "--out", str(out)],
        out,
        "--trust-pickle",
    )


@pytest.mark.parametrize("shape", ["1,3,32", "1,4,32,32", "1,3,x,32"])
def test_wrong_input_shape(tmp_path, capsys, state_dict_file, shape):
    out = tmp_path / "out"
    argv = [
        "compress",
        str(state_dict_file),
        "--arch",
        "convslim.models:resnet20",
        "--input-shape",
        shape,
        "--out",
        str(out),
    ]
    fails_cleanly(capsys, argv, out, "--input-shape")


def test_unknown_form(tmp_path, capsys, state_dict_file):
    out = tmp_path / "out"
    fails_cleanly(
        capsys,
        ["compress", str(state_dict_file), *ARCH, "--to", "magic", "--out", str(out)],
        out,
        "unknown form 'magic'",
    )


def test_output_folder_with_files_needs_overwrite(tmp_path, capsys, state_dict_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["compress", str(state_dict_file), *ARCH, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_output_over_input_is_refused(tmp_path, capsys, state_dict_file):
    assert main(["compress", str(state_dict_file), *ARCH, "--out", str(state_dict_file)]) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert state_dict_file.stat().st_size > 1000


def test_inspect_lists_every_conv_without_writing(tmp_path, capsys, state_dict_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(state_dict_file), *ARCH, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 19 and rows[1]["macs"] == 16 * 9 * 16 * 32 * 32
    assert rows[1]["forms"]["dwsep"]["macs"] == 16 * (9 + 16) * 32 * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.pt"]


def test_verification_failure_exits_1_after_writing(tmp_path, capsys, state_dict_file, monkeypatch):
    from convslim.verify.parity import judge_with_floor

    # tolerance 0 and no allowance for the original's own ONNX error (4x it would pass this float32 noise)
    monkeypatch.setattr("convslim.verify.pipeline.judge_with_floor", lambda p, f: judge_with_floor(p, f, 0.0))
    out = tmp_path / "out"
    code = main(
        [
            "compress",
            str(state_dict_file),
            *ARCH,
            "--out",
            str(out),
            "--no-speed",
            "--tolerance",
            "0",
            "--quiet",
        ]
    )
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and report["passed"] is False
    assert report["parity"]["onnx_vs_torch"]["max_abs_err"] > 0
    assert "max_abs_err" in report["parity"]["original_onnx_vs_torch"]


@pytest.mark.slow
def test_compress_real_resnet20_end_to_end(tmp_path, capsys, resnet20_path):
    out = tmp_path / "out"
    argv = [
        "compress",
        str(resnet20_path),
        *ARCH,
        "--to",
        "dwsep",
        "--rank",
        "1",
        "--out",
        str(out),
        "--quiet",
        "--batch-sizes",
        "1,32",
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert {p.name for p in out.iterdir()} == {
        "model.onnx",
        "original.onnx",
        "compressed.pt2",
        "compressed_state_dict.pt",
        "plan.json",
        "report.json",
        "report.md",
    }
    assert len(report["layers"]) == 19 and all(layer["form"] == "dwsep" for layer in report["layers"])
    assert report["parity"]["onnx_vs_torch"]["max_abs_err"] <= 1e-4
    assert "BatchNormalization" not in report["parity"]["onnx_ops"]
    assert report["totals"]["macs_after"] < 0.2 * report["totals"]["macs_before"]
    assert report["schema_version"] == 2 and "ort_cpu" not in report["speed"]  # the duplicate is gone
    for batch in ("1", "32"):
        entry = report["deploy"]["speed"][batch]
        latency = entry["latency"]
        assert latency["original_fp32"]["ms"] > 0 and latency["compressed_fp32"]["ms"] > 0
        assert latency["original_fp32"]["runs"] >= 10 and latency["compressed_fp32"]["runs"] >= 10
        speed = entry["speedup"]["vs_original_fp32"]["compressed_fp32"]
        low, high = speed["speedup_iqr"]
        assert low <= high and speed["runs"] >= 10 and speed["rounds"] >= 3
    assert report["parity"]["original_onnx_vs_torch"]["passed"]
    assert "ort_cuda" in report["speed"]
    steady = report["deploy"]["speed_one_thread"]  # the fp32 pair again, one ORT thread per session
    assert set(steady) == {"1", "32"} and all(s["speedup"] > 1 and s["rounds"] >= 3 for s in steady.values())
    printed = capsys.readouterr().out
    assert "speedup vs BN-folded original" in printed and "one ORT thread per session" in printed
    assert "one ORT thread per session" in (out / "report.md").read_text()
