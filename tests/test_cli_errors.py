"""Every mistake a user makes: exit 2, one line naming the file or setting and what to do, no traceback, and
nothing written (issue 13, cases 1, 4, 5, 7 and 10)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

import convslim
from convslim.cli import main
from convslim.errors import UsageError
from tests.cli_models import Small, arch, fails_cleanly, save_small


@pytest.fixture
def weights(tmp_path) -> Path:
    return save_small(tmp_path)


def compress_argv(model: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", str(model), *extra, "--out", str(out), "--no-speed", "--quiet"]


def test_factory_that_raises(tmp_path, capsys, weights):
    out = tmp_path / "out"
    err = fails_cleanly(
        capsys, compress_argv(weights, out, *arch("broken")), out, "the factory raised ValueError"
    )
    assert "checkpoint server unreachable" in err


def test_state_dict_of_another_size(tmp_path, capsys):
    path = tmp_path / "narrow.pt"
    torch.save(Small(width=4).state_dict(), path)
    out = tmp_path / "out"
    err = fails_cleanly(capsys, compress_argv(path, out, *arch()), out, "does not fit")
    assert "conv1.weight is [4, 3, 3, 3] in the file but [8, 3, 3, 3] in the model" in err


def test_nan_in_a_conv_weight(tmp_path, capsys):
    model = Small()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "out"
    fails_cleanly(capsys, compress_argv(path, out, *arch()), out, "conv2.weight holds NaN")


def test_text_file_as_model(tmp_path, capsys):
    path = tmp_path / "notes.pt"
    path.write_text("hello\n" * 20)
    out = tmp_path / "out"
    err = fails_cleanly(capsys, compress_argv(path, out, *arch()), out, "is not a PyTorch file")
    assert "--trust-pickle" not in err


def test_random_bytes_do_not_suggest_trust_pickle(tmp_path, capsys):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 8)  # starts like a pickle, is not one
    out = tmp_path / "out"
    err = fails_cleanly(capsys, compress_argv(path, out, *arch()), out, "is not a PyTorch file")
    assert "--trust-pickle" not in err


def test_onnx_file_as_model(tmp_path, capsys):
    path = tmp_path / "small.onnx"
    torch.onnx.export(Small().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=True)
    out = tmp_path / "out"
    fails_cleanly(
        capsys, compress_argv(path, out, *arch()), out, "already an ONNX model; give the PyTorch model"
    )


def test_read_only_out_is_found_before_any_work(tmp_path, capsys, weights, monkeypatch):
    import convslim.core.outputs
    import convslim.inputs.loading

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(
        convslim.core.outputs.tempfile, "mkdtemp", read_only
    )  # as root, chmod would not stop us
    monkeypatch.setattr(convslim.inputs.loading, "load_model", never)
    out = tmp_path / "out"
    fails_cleanly(capsys, compress_argv(weights, out, *arch()), out, "Read-only file system")


def test_api_out_dir_is_checked_first_in_api_words(tmp_path, monkeypatch):
    import convslim.api

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    monkeypatch.setattr(
        convslim.api, "prepare", lambda *a, **k: pytest.fail("worked before checking out_dir")
    )
    with pytest.raises(UsageError, match=r"out_dir .* overwrite=True") as caught:
        convslim.compress(Small(), torch.randn(1, 3, 16, 16), out_dir=out)
    assert "--" not in str(caught.value)
    assert (out / "mine.txt").read_text() == "keep"


def test_data_dependent_branch_names_the_line(tmp_path, capsys, weights):
    out = tmp_path / "out"
    err = fails_cleanly(capsys, compress_argv(weights, out, *arch("branchy")), out, "cli_models.py:")
    assert "if y.sum() > 0:" in err and "torch.cond" in err


def test_inspect_warns_about_export_before_any_work(capsys, weights):
    assert main(["inspect", str(weights), *arch("branchy")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: compress will fail at export" in err and "torch.cond" in err
    assert len(err.strip().splitlines()) == 1


def test_nothing_rewritten_is_an_error(tmp_path, capsys, weights):
    out = tmp_path / "out"
    err = fails_cleanly(
        capsys,
        compress_argv(weights, out, *arch(), "--to", "grouped", "--groups", "3"),
        out,
        "nothing was rewritten",
    )
    assert "groups" in err


def test_dict_output_cannot_be_fine_tuned(tmp_path, capsys, weights):
    data = tmp_path / "train.npz"
    import numpy as np

    np.savez(data, x=np.random.rand(8, 3, 16, 16).astype("float32"), y=np.arange(8) % 10)
    out = tmp_path / "out"
    fails_cleanly(
        capsys, compress_argv(weights, out, *arch("dict_out"), "--data", str(data)), out, "must be one tensor"
    )


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, weights):
    with pytest.raises(UsageError, match="factory raised"):
        main(compress_argv(weights, tmp_path / "out", *arch("broken"), "--debug"))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"convslim {convslim.__version__}"


@pytest.mark.parametrize("command", ["compress", "plan", "inspect"])
def test_help_shows_defaults_and_an_example(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "example:" in text and f"convslim {command} " in text
    assert "(default 128)" in text or command != "compress"
    assert "dwsep: 1" in text  # a form option's default, from the registry


def test_overwrite_says_what_it_removes_and_replaces_the_folder(tmp_path, capsys, weights):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old-notes.txt").write_text("old")
    assert main(compress_argv(weights, out, *arch(), "--overwrite")) == 0
    err = capsys.readouterr().err
    assert "removes 1 existing entry: old-notes.txt" in err
    assert not (out / "old-notes.txt").exists()
    assert json.loads((out / "report.json").read_text())["layers"]
