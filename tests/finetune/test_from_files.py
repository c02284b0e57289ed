"""``finetune.from_files``: data from disk, checked against the model, into the hook and the calibration batch
``compress`` takes; ``from_data`` (what the CLI uses) builds the same from data already loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convslim.errors import UsageError
from convslim.finetune import FinetuneHook, from_data, from_files
from convslim.inputs.sets import load_sets

EXAMPLE = (torch.randn(1, 3, 16, 16),)


def _npz(path, n: int, side: int = 16, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    np.savez(path, x=x, y=rng.integers(0, classes, size=n))
    return path


def test_from_files_loads_checks_and_builds_the_hook(tiny, tmp_path):
    train, val = _npz(tmp_path / "train.npz", 300), _npz(tmp_path / "val.npz", 40, seed=1)
    loaded = from_files(tiny, EXAMPLE, train, val, steps=7, batch_size=16, mean=[0.5], std=[0.25])
    assert isinstance(loaded.hook, FinetuneHook)
    assert (loaded.hook.settings.steps, loaded.hook.settings.batch_size) == (7, 16)
    assert loaded.train.x.shape == (300, 3, 16, 16) and loaded.val.x.shape == (40, 3, 16, 16)
    assert loaded.calibration.shape == (256, 3, 16, 16)  # the first CALIBRATION_BATCH training samples
    torch.testing.assert_close(loaded.calibration, loaded.train.x[:256])
    raw = torch.from_numpy(np.load(train)["x"][:1]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(loaded.train.x[:1], (raw - 0.5) / 0.25)  # mean/std applied on loading


def test_from_files_names_the_file_that_does_not_fit(tiny, tmp_path):
    train = _npz(tmp_path / "train.npz", 20)
    with pytest.raises(UsageError, match=r"--data .*train\.npz"):
        from_files(tiny, (torch.randn(1, 3, 24, 24),), train, steps=1)
    bad_labels = _npz(tmp_path / "val.npz", 20, classes=50, seed=2)
    with pytest.raises(UsageError, match=r"--val-data .*val\.npz: labels span .* 4 classes"):
        from_files(tiny, EXAMPLE, train, bad_labels, steps=1)

    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(UsageError, match="fine-tuning distils the model's output"):
        from_files(TwoOutputs(), EXAMPLE, tmp_path / "never-read.npz", steps=1)  # refused before any loading


def test_from_data_is_from_files_for_loaded_data(tiny, tmp_path):
    train, val = _npz(tmp_path / "train.npz", 64), _npz(tmp_path / "val.npz", 16, seed=1)
    files = from_files(tiny, EXAMPLE, train, val, steps=3, seed=5)
    sets = load_sets(tiny, EXAMPLE, {"--data": train, "--val-data": val})
    data = from_data(tiny, EXAMPLE, sets["--data"], sets["--val-data"], steps=3, seed=5)
    assert files.hook.settings == data.hook.settings
    torch.testing.assert_close(files.calibration, data.calibration)
    torch.testing.assert_close(files.val.x, data.val.x)
