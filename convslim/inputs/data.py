"""Data for calibration and fine-tuning: image folders, ``.npz`` arrays and ``.pt`` tensor files.

Everything becomes an ``ArrayData``: float inputs N×C×H×W (or N×… for non-image tensors) and optional int64
labels. Images and uint8 arrays are scaled to [0, 1]; then, when given, ``(x − mean) / std`` per channel.

Inputs:
- a folder of images: class sub-folders (sorted names → labels 0..K−1) or a flat folder (unlabeled).
  Unreadable files are skipped and counted; with ``resize`` every image is resized to H×W, otherwise they
  must all have the same size.
- ``.npz`` with ``x`` (N×H×W×C uint8, or N×C×H×W float) and optional ``y``.
- ``.pt`` holding a tensor, a ``(x, y)`` pair or a dict with ``x`` / ``y`` (loaded with ``weights_only``).

Example:
    >>> data = load_data("train.npz", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> check_inputs(data, (1, 3, 32, 32), "--data train.npz")
    >>> x, y = next(data.batches(128, shuffle=True))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convslim.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class ArrayData:
    """In-memory inputs ``x`` and optional labels ``y``; ``skipped`` counts unreadable files left out."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    source: str = "data"
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        return self.batches(256, shuffle=False)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One pass over the data in batches of ``batch_size`` (the last one may be smaller)."""
        order = torch.randperm(len(self.x), generator=generator) if shuffle else torch.arange(len(self.x))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], (None if self.y is None else self.y[idx])


def load_data(
    path: str | Path,
    resize: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "--data",
) -> ArrayData:
    """Load a folder of images, an ``.npz`` or a ``.pt`` file (see the module docstring). ``name`` is the setting
    the file came from (``--data``, ``--val-data``, ``--calib-data``), as messages name it. Inputs holding NaN or
    ±inf are refused: a model trained or scored on them is NaN, and a NaN comparison proves nothing."""
    path = Path(path)
    where = f"{name} {path}"
    if path.is_dir():
        data = _load_folder(path, resize, where)
    elif not path.exists():
        raise UsageError(f"{where}: no such file or folder")
    elif path.suffix == ".npz":
        data = _load_npz(path, where)
    elif path.suffix in (".pt", ".pth"):
        data = _load_pt(path, where)
    else:
        raise UsageError(f"{where}: expected an image folder, .npz or .pt file")
    if resize and data.x.dim() == 4 and tuple(data.x.shape[-2:]) != tuple(resize):
        # arrays: bilinear resize in [0, 1] space, like the images (``antialias`` when shrinking)
        data.x = torch.nn.functional.interpolate(data.x, size=tuple(resize), mode="bilinear", antialias=True)
    data.x = normalize(data.x, mean, std, str(path))
    check_finite_inputs(data.x, where)
    return data


def check_finite_inputs(x: torch.Tensor, where: str) -> None:
    """Refuse inputs holding NaN or ±inf, naming the first bad sample and how many there are."""
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1) if len(x) else torch.zeros(0, dtype=torch.bool)
    if bool(bad.any()):
        first, count = int(bad.nonzero()[0]), int(bad.sum())
        raise UsageError(
            f"{where}: {count} of {len(x)} samples hold NaN or infinite values (the first: sample {first}); "
            "clean or drop them (a model trained or scored on them gives NaN)"
        )


def normalize(x: torch.Tensor, mean, std, source: str) -> torch.Tensor:
    if mean is None and std is None:
        return x
    channels = x.shape[1]
    mean_t = _per_channel(mean if mean is not None else [0.0], channels, "--mean", source)
    std_t = _per_channel(std if std is not None else [1.0], channels, "--std", source)
    if (std_t <= 0).any():
        raise UsageError(f"--std must be positive, got {list(std)}")
    shape = (1, channels) + (1,) * (x.dim() - 2)
    return (x - mean_t.view(shape)) / std_t.view(shape)


def _per_channel(values, channels: int, flag: str, source: str) -> torch.Tensor:
    t = torch.tensor([float(v) for v in values])
    if len(t) == 1:
        return t.expand(channels).clone()
    if len(t) != channels:
        raise UsageError(f"{flag} has {len(t)} values but {source} has {channels} channels; give {channels}")
    return t


def _from_array(x: np.ndarray, source: str) -> torch.Tensor:
    """uint8 N×H×W×C (or N×H×W) images → float N×C×H×W in [0, 1]; float arrays are taken as they are."""
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise UsageError(f"{source}: uint8 x must be N×H×W×C images, got shape {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise UsageError(f"{source}: x must be uint8 images or floats, got {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x)).float()


def _labels(y, n: int, source: str) -> torch.Tensor | None:
    if y is None:
        return None
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y.dim() != 1 or len(y) != n or y.is_floating_point() and not torch.equal(y, y.round()):
        raise UsageError(f"{source}: y must be {n} integer labels, got shape {tuple(y.shape)} {y.dtype}")
    return y.long()


def _load_npz(path: Path, where: str) -> ArrayData:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{where}: not a readable .npz ({exc})") from None
    if "x" not in arrays.files:
        raise UsageError(f"{where}: no array named 'x' (found {arrays.files}); save inputs as x=")
    x = _from_array(arrays["x"], where)
    y = _labels(arrays["y"] if "y" in arrays.files else None, len(x), where)
    return _nonempty(ArrayData(x, y, str(path)), where)


def _load_pt(path: Path, where: str) -> ArrayData:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any load failure is the file's problem)
        raise UsageError(f"{where}: not a readable tensor file ({type(exc).__name__})") from None
    if isinstance(obj, dict):
        x, y = obj.get("x"), obj.get("y")
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    else:
        x, y = obj, None
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"{where}: expected a tensor, (x, y) or {{'x': ..., 'y': ...}}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return _nonempty(ArrayData(x, _labels(y, len(x), where), str(path)), where)


def _load_folder(path: Path, resize: Sequence[int] | None, where: str) -> ArrayData:
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(f, label) for label, d in enumerate(classes) for f in _image_files(d)]
    else:
        files = [(f, None) for f in _image_files(path)]
    if not files:
        raise UsageError(f"{where}: no image files found; give a folder of images or class sub-folders")
    images, labels, skipped = [], [], 0
    for file, label in files:
        image = _read_image(file, resize)
        if image is None:
            skipped += 1
            continue
        images.append(image)
        labels.append(label)
    if not images:
        raise UsageError(f"{where}: none of the {skipped} image files could be read")
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise UsageError(f"{where}: images differ in size ({len(sizes)} sizes); pass --resize H,W")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    y = torch.tensor(labels) if classes else None
    return ArrayData(x, y, str(path), skipped)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(file: Path, resize: Sequence[int] | None) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            im = im.convert("RGB")
            if resize:
                im = im.resize((int(resize[-1]), int(resize[0])), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _nonempty(data: ArrayData, where: str) -> ArrayData:
    if len(data.x) == 0:
        raise UsageError(f"{where}: holds no samples")
    return data


def check_inputs(data: ArrayData, input_shape: Sequence[int], source: str) -> None:
    """Samples must have the model's input shape (all but the batch axis)."""
    want, got = tuple(input_shape[1:]), tuple(data.x.shape[1:])
    if want != got:
        hint = "; pass --resize H,W" if len(want) == len(got) == 3 and want[0] == got[0] else ""
        raise UsageError(
            f"{source}: samples are {'×'.join(map(str, got))}, the model takes {'×'.join(map(str, want))}{hint}"
        )


def check_labels(data: ArrayData, num_classes: int | None, source: str) -> None:
    """Labels must lie in [0, num_classes) of the model's output."""
    if data.y is None or num_classes is None or len(data.y) == 0:
        return
    low, high = int(data.y.min()), int(data.y.max())
    if low < 0 or high >= num_classes:
        raise UsageError(
            f"{source}: labels span {low}..{high}, the model has {num_classes} classes; fix the labels"
        )


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} {text!r}: expected finite numbers like 0.485,0.456,0.406")
    return values


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``--resize 32`` or ``--resize 32,48`` (H,W)."""
    if text is None:
        return None
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise UsageError(f"--resize {text!r}: expected a size like 32 or 32,48 (H,W)")
    return (sizes[0], sizes[-1])


@torch.no_grad()
def output_classes(model: torch.nn.Module, example_inputs: tuple) -> int | None:
    """The number of classes when the model returns one N×K tensor (logits), else None (labels unchecked)."""
    out = model.eval()(*example_inputs)
    return out.shape[1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared on loading: ``resize`` to (H, W), then normalised by ``mean``/``std`` per channel."""

    resize: Sequence[int] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def pixel_box(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per channel, where a real image's pixels lie once prepared: [0, 1] mapped by ``(p − mean) / std``
        (the same per-channel values and checks as loading applies).

        Example:
            >>> Preprocess(mean=[0.5], std=[0.25]).pixel_box(3)
            ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))
        """
        where = "the model's input"
        mean = _per_channel(self.mean if self.mean is not None else [0.0], channels, "--mean", where)
        std = _per_channel(self.std if self.std is not None else [1.0], channels, "--std", where)
        if (std <= 0).any():
            raise UsageError(f"--std must be positive, got {list(self.std)}")
        return tuple(((0 - mean) / std).tolist()), tuple(((1 - mean) / std).tolist())


def load_for_model(
    path: str | Path,
    example_inputs: tuple,
    num_classes: int | None,
    preprocess: Preprocess = Preprocess(),
    name: str = "--data",
) -> ArrayData:
    """``load_data`` plus the checks a model needs: samples shaped like its first input, labels within its
    classes (``output_classes``). ``name`` says which setting the file came from in messages.

    Example:
        >>> train = load_for_model("train.npz", (torch.randn(1, 3, 32, 32),), output_classes(model, inputs))
    """
    data = load_data(path, preprocess.resize, preprocess.mean, preprocess.std, name)
    check_inputs(data, example_inputs[0].shape, f"{name} {data.source}")
    check_labels(data, num_classes, f"{name} {data.source}")
    return data
