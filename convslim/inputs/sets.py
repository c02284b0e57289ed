"""The data sets one run uses: ``--data``, ``--val-data`` and ``--calib-data`` loaded and checked against the
model (``load_sets``), and the share of ``--data`` held out of fine-tuning to score on when there is no
``--val-data`` (``HeldOut``, ``split_held_out``).

Example:
    >>> sets = load_sets(model, inputs, {"--data": "train.npz", "--val-data": None}, held_out=HeldOut())
    >>> train, scored = training_set(sets), scored_set(sets)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from convslim.errors import UsageError
from convslim.inputs.data import ArrayData, Preprocess, load_for_model, output_classes


def load_sets(
    model,
    example_inputs: tuple,
    files: dict[str, str | Path | None],
    preprocess: Preprocess = Preprocess(),
    held_out: HeldOut | None = None,
) -> dict[str, ArrayData]:
    """Every file given in ``files`` (name, e.g. "--data", → path; None: not given), loaded and checked against
    ``model``'s inputs and classes; the one loader ``convslim.finetune.from_files`` and the CLI share. With
    ``held_out`` and no "--val-data", a stratified share of "--data" is split off as ``sets[HELD_OUT]``, the rest
    is ``sets[TRAINING]`` (``split_held_out``); "--data" stays whole (its first images are still the calibration
    batch: no labels, no training).

    Example:
        >>> sets = load_sets(model, inputs, {"--data": "train.npz", "--val-data": None}, held_out=HeldOut(0.1))
        >>> list(sets)
        ['--data', '--data less the held-out share', 'held out of --data']
    """
    given = {name: path for name, path in files.items() if path is not None}
    if not given:
        return {}
    classes = output_classes(model, example_inputs)
    sets = {
        name: load_for_model(path, example_inputs, classes, preprocess, name) for name, path in given.items()
    }
    if held_out is not None and "--data" in sets and "--val-data" not in sets:
        train, held = split_held_out(sets["--data"], held_out)
        if held is not None:
            sets[TRAINING], sets[HELD_OUT] = train, held
    return sets


TRAINING, HELD_OUT = "--data less the held-out share", "held out of --data"


def training_set(sets: dict[str, ArrayData]) -> ArrayData | None:
    """What fine-tuning trains on: --data less the share held out of it (all of --data when none is)."""
    return sets.get(TRAINING) or sets.get("--data")


def scored_set(sets: dict[str, ArrayData]) -> ArrayData | None:
    """What accuracy is scored on: --val-data, else the share held out of --data (None: neither)."""
    return sets.get("--val-data") or sets.get(HELD_OUT)


@dataclass(frozen=True)
class HeldOut:
    """How much of the training data is held out from fine-tuning to score on (0: none), drawn with ``seed``.

    ``fraction`` None is the default: 10 % of the data, at most ``MOST`` images. Every image held out is one the
    student does not learn from: on ResNet-20's ×2 plan with train10k, holding out 10 % cost 0.5-0.8 pt of val5k
    top-1 after a 10-minute fine-tune, 5 % 0.4 pt (README, issue 25), while 500 scored images pin top-1 to ±1.3 pt.

    Example:
        >>> HeldOut().count(10_000), HeldOut().count(2_000), HeldOut(0.2).count(10_000)
        (500, 200, 2000)
    """

    fraction: float | None = None
    seed: int = 0
    SHARE = 0.1
    MOST = 500

    def __post_init__(self):
        if self.fraction is None:
            return
        if not (isinstance(self.fraction, (int, float)) and 0 <= self.fraction < 1):
            raise UsageError(f"--val-split {self.fraction}: must be a fraction in [0, 1) (0: train on all)")

    def count(self, n: int) -> int:
        """How many of ``n`` samples are held out."""
        if self.fraction is None:
            return min(round(self.SHARE * n), self.MOST)
        return round(self.fraction * n)


def split_held_out(data: ArrayData, held_out: HeldOut) -> tuple[ArrayData, ArrayData | None]:
    """(the rest, ``held_out.count(len(data))`` samples of ``data``) or (``data``, None) when that is no image or
    leaves no training image. Stratified: each label keeps its share, n_held over all, split among
    labels by largest remainder; unlabeled data is drawn at random. Both keep the data's order.

    Example:
        >>> train, held = split_held_out(ArrayData(x, y, "train.npz"), HeldOut(0.1))
        >>> len(held), held.source
        (1000, 'train.npz, 10 % held out of fine-tuning (stratified by label)')
    """
    n = len(data)
    wanted = held_out.count(n)
    if wanted < 1 or wanted >= n:
        return data, None
    fraction = wanted / n
    gen = torch.Generator().manual_seed(held_out.seed)
    labels = data.y if data.y is not None else torch.zeros(n, dtype=torch.long)
    groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    shares = [fraction * len(g) for g in groups]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(groups)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: wanted - sum(counts)]:
        counts[i] += 1
    chosen = [g[torch.randperm(len(g), generator=gen)[:k]] for g, k in zip(groups, counts, strict=True)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.cat(chosen)] = True
    how = "stratified by label" if data.y is not None else "at random"
    source = f"{data.source}, {fraction * 100:.3g} % held out of fine-tuning ({how})"
    return _subset(data, ~mask, data.source), _subset(data, mask, source)


def _subset(data: ArrayData, mask: torch.Tensor, source: str) -> ArrayData:
    return ArrayData(data.x[mask], None if data.y is None else data.y[mask], source, data.skipped)
