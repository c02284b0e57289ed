"""Output files and folders appear whole, with the permissions any new file would have."""

from __future__ import annotations

import os
import stat

import pytest

from convslim.core.outputs import atomic_write_bytes, atomic_write_text, check_output_dir, staged_output_dir
from convslim.errors import UsageError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_gives_umask_permissions_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write_bytes(tmp_path / "b.png", b"\x89PNG")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == "{}"
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "b.png") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png"]  # no temporary left


def test_staged_folder_vanishes_on_error_and_appears_whole_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output_dir(out) as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_output_dir(out) as staging:
        (staging / "report.json").write_text("{}")
    assert (out / "report.json").read_text() == "{}"


def test_check_output_dir_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "x").write_text("keep")
    with pytest.raises(UsageError, match="already has files"):
        check_output_dir(tmp_path)
    assert check_output_dir(tmp_path, overwrite=True) == ["x"]
