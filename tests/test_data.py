"""Data loading for fine-tuning: every input kind, and the bad inputs the user must be told about."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convslim.errors import UsageError
from convslim.inputs.data import Preprocess, check_inputs, check_labels, load_data, parse_floats, parse_size


def _images(folder, n, size=(8, 6), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")


def test_npz_uint8_nhwc_is_scaled_and_transposed(tmp_path):
    x = np.full((5, 4, 4, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    data = load_data(tmp_path / "d.npz", mean=[0.5], std=[0.25])
    assert data.x.shape == (5, 3, 4, 4)
    assert torch.allclose(data.x, torch.full_like(data.x, 2.0))
    assert data.y.tolist() == [0, 1, 2, 3, 4]


def test_npz_float_nchw_is_taken_as_is(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 2, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    data = load_data(tmp_path / "d.npz")
    assert torch.equal(data.x, torch.from_numpy(x)) and data.y is None


@pytest.mark.parametrize("kind", ["tensor", "pair", "dict"])
def test_pt_files(tmp_path, kind):
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 1, 0])
    obj = {"tensor": x, "pair": (x, y), "dict": {"x": x, "y": y}}[kind]
    torch.save(obj, tmp_path / "d.pt")
    data = load_data(tmp_path / "d.pt")
    assert torch.equal(data.x, x)
    assert (data.y is None) == (kind == "tensor")


def test_class_folders_give_labels_and_resize(tmp_path):
    _images(tmp_path / "cat", 2)
    _images(tmp_path / "dog", 3, size=(10, 10))
    data = load_data(tmp_path, resize=(4, 4))
    assert data.x.shape == (5, 3, 4, 4)
    assert data.y.tolist() == [0, 0, 1, 1, 1]


def test_flat_folder_is_unlabeled(tmp_path):
    _images(tmp_path, 3)
    data = load_data(tmp_path)
    assert data.x.shape == (3, 3, 8, 6) and data.y is None


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    _images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data = load_data(tmp_path)
    assert len(data) == 2 and data.skipped == 1


def test_only_unreadable_images_is_an_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(UsageError, match="none of the 1 image files"):
        load_data(tmp_path)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="no image files"):
        load_data(tmp_path)


def test_mixed_sizes_ask_for_resize(tmp_path):
    _images(tmp_path, 1, size=(8, 8))
    Image.new("RGB", (5, 5)).save(tmp_path / "small.png")
    with pytest.raises(UsageError, match="--resize"):
        load_data(tmp_path)


def test_shape_mismatch_and_label_range(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 12]))
    data = load_data(tmp_path / "d.npz")
    with pytest.raises(UsageError, match="model takes 3×32×32; pass --resize"):
        check_inputs(data, (1, 3, 32, 32), "--data d.npz")
    check_inputs(data, (1, 3, 8, 8), "--data d.npz")
    check_inputs(load_data(tmp_path / "d.npz", resize=(32, 32)), (1, 3, 32, 32), "--data d.npz")
    with pytest.raises(UsageError, match="labels span 0..12, the model has 10 classes"):
        check_labels(data, 10, "--data d.npz")


def test_bad_files_and_flags(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_data(tmp_path / "missing.npz")
    np.savez(tmp_path / "noy.npz", z=np.zeros(3))
    with pytest.raises(UsageError, match="no array named 'x'"):
        load_data(tmp_path / "noy.npz")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a readable tensor file"):
        load_data(tmp_path / "bad.pt")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(UsageError, match="--mean has 2 values"):
        load_data(tmp_path / "d.npz", mean=[0.1, 0.2])
    with pytest.raises(UsageError):
        parse_floats("a,b", "--mean")
    assert parse_size("32") == (32, 32) and parse_size("32,48") == (32, 48)
    with pytest.raises(UsageError):
        parse_size("0")


@pytest.mark.parametrize(
    "mean, std, box",
    [
        (None, None, ((0.0, 0.0), (1.0, 1.0))),
        ([0.5], [0.25], ((-2.0, -2.0), (2.0, 2.0))),
        ([0.5, 0.25], [0.5], ((-1.0, -0.5), (1.0, 1.5))),
    ],
)
def test_pixel_box_is_where_prepared_pixels_lie(mean, std, box):
    assert Preprocess(mean=mean, std=std).pixel_box(2) == box


def test_pixel_box_refuses_values_that_do_not_fit_the_channels():
    with pytest.raises(UsageError, match="--std has 3 values but the model's input has 2 channels"):
        Preprocess(mean=[0.1, 0.2], std=[0.3, 0.4, 0.5]).pixel_box(2)
