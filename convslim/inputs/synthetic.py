r"""Inputs synthesised from the model itself, for fine-tuning without data (``--data synthetic:N``).

A trained network's BatchNorm layers remember the mean μ_l and variance σ²_l of what they saw in training, per
channel. Starting from seeded Gaussian noise x (already in the model's input space, i.e. normalised as the model
expects), Adam optimises the *inputs* so that the batch statistics of every BatchNorm's input match them
(ZeroQ, Cai et al. 2020):

    L_BN(x) = Σ_l ‖μ̂_l(x) − μ_l‖₂ + ‖σ̂²_l(x) − σ²_l‖₂,     μ̂_l, σ̂²_l over (batch, H, W) of BN l's input

optionally plus DeepInversion's extras (Yin et al. 2020): the loss taken on a randomly shifted (``jitter``) and
flipped (``flip``) view of x, an image prior  w_tv · mean ‖∇x‖² (``prior_weight``), and a term for confident,
class-balanced outputs  w_out · CE(f(x), y) with targets y cycling through the classes (``output_weight``).
With ``box`` (per channel, the range a real image's pixels take in the model's input space: [0, 1] mapped by
the normalisation, ``Preprocess.pixel_box``) every step projects x into it, x ← min(max(x, low), high), as
DeepInversion clips its images: unbounded, the statistics are met by pixels no image has (ResNet-20's CIFAR
images reach −8.2 where real ones stop at −2.1). Off by default: on ResNet-20 it lowered stage 1 by 2 pt and
gained nothing once stage 2 mixes the images (README "Without data").
Coarse to fine (``coarse``, a share of each batch's steps): x starts as noise at half the input's height and
width, and for the first ``coarse · steps`` steps the model sees its bilinear upsampling U(x), so a step moves
only the low frequencies; then x ← U(x) and the rest of the steps refine every pixel (the multi-resolution
synthesis of DeepInversion, which feeds the low resolution itself; here the model always sees full size, so a
step costs the same). Per-pixel noise alone matches the statistics with images no camera takes; started
smooth, they look more like data to the layers after the first: on ResNet-20 (×2 plan, 640 images) stage 1
alone rose from 72.5 to 76.5 % of val5k top-1 (README "Without data").
The statistics are read from the model given (the user's original, before convslim folds BatchNorm into the
convs), through forward pre-hooks on a frozen copy in eval mode; the model itself is never changed.

Images are optimised in batches of ``batch_size`` (batch statistics are what is matched), ``steps`` Adam steps
each with a cosine learning rate. Batch k starts from a generator seeded by (seed, k), so each batch is the same
whoever makes it: under torchrun rank r makes batches r, r + N, ... and every rank receives all of them, so the
result does not depend on the number of ranks. With ``seconds`` the batches stop once another round would
overrun it (on rank 0's clock), so fewer images may come back; ``record`` says how many and how long it took.

Example:
    >>> data = synthesize(model, (torch.randn(1, 3, 32, 32),), SynthesisSettings(count=512, steps=100))
    >>> data.x.shape, data.record.seconds
    (torch.Size([512, 3, 32, 32]), 41.2)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from convslim import parallel
from convslim.core.heap import retained_heap
from convslim.errors import UsageError
from convslim.inputs.bn_probe import BatchNormProbe
from convslim.inputs.data import ArrayData

SYNTHETIC = "synthetic"
DEFAULT_COUNT = 1024


@dataclass(frozen=True)
class SynthesisSettings:
    count: int = DEFAULT_COUNT  # images to make
    steps: int = 100  # Adam steps per batch
    batch_size: int = 128  # images optimised together (their batch statistics are matched)
    lr: float = 0.25
    seed: int = 0
    jitter: int | None = None  # random shift of up to this many pixels per step; None: 1/16 of the image side
    flip: bool = True  # random left-right flip per step
    prior_weight: float = 0.0  # w_tv: smoothness prior on the image
    output_weight: float = 0.0  # w_out: confident, class-balanced outputs
    # per-channel (low, high) of a real image in the model's input space, e.g. ((0 − mean) / std, (1 − mean) / std)
    # (``pixel_box``): each step projects x into it; None: unbounded
    box: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # share of each batch's steps taken at half resolution (x at H/2×W/2, the model fed its bilinear
    # upsampling), then x upsampled and refined at full resolution; 0: full resolution throughout (module docstring)
    coarse: float = 0.5
    seconds: float | None = None  # stop making batches when another round would overrun this
    progress: bool = True
    retain_heap: bool = True  # glibc malloc keeps freed memory meanwhile (``core.heap``): 0.81-0.95x the time

    def check(self) -> None:
        if self.count < 1:
            raise UsageError(f"--data synthetic:N needs N ≥ 1 images, got {self.count}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("synthesis steps, batch size and learning rate must be positive")
        if (self.jitter or 0) < 0 or self.prior_weight < 0 or self.output_weight < 0:
            raise UsageError("synthesis jitter and loss weights must be ≥ 0")
        if not 0 <= self.coarse < 1:
            raise UsageError(f"synthesis coarse share {self.coarse}: must be in [0, 1)")


@dataclass(frozen=True)
class SynthesisRecord:
    """What ``synthesize`` made: images, time, the BN-statistics loss before and after (mean over batches)."""

    images: int
    asked: int
    seconds: float
    bn_loss_start: float
    bn_loss_end: float
    settings: dict = field(default_factory=dict)
    ranks: int = 1

    def describe(self) -> str:
        """e.g. "1024 synthetic images made from the model's BatchNorm statistics in 83 s"."""
        short = (
            f" (of {self.asked} asked; the time share for making them ran out)"
            if self.images < self.asked
            else ""
        )
        return f"{self.images} synthetic images{short} made from the model's BatchNorm statistics in {self.seconds:.0f} s"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticData(ArrayData):
    """``ArrayData`` (no labels) made by ``synthesize``; ``record`` says how."""

    record: SynthesisRecord | None = None


def parse_synthetic(text: str | None, flag: str = "--data") -> int | None:
    """``"synthetic"`` → the default count, ``"synthetic:N"`` → N; anything else (a path) → None.

    Example:
        >>> parse_synthetic("synthetic:512"), parse_synthetic("train.npz")
        (512, None)
    """
    if text is None or not str(text).startswith(SYNTHETIC):
        return None
    head, sep, count = str(text).partition(":")
    if head != SYNTHETIC:
        return None
    if not sep:
        return DEFAULT_COUNT
    try:
        n = int(count)
    except ValueError:
        raise UsageError(f"{flag} {text}: expected synthetic or synthetic:N with N a whole number") from None
    if n < 1:
        raise UsageError(f"{flag} {text}: N must be ≥ 1 synthetic images")
    return n


def image_shape(example_inputs) -> tuple[int, ...]:
    """The model's one input, which must be an N×C×H×W image batch: synthesis makes images."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() != 4:
        shapes = ", ".join("×".join(map(str, getattr(t, "shape", ()))) or "?" for t in inputs)
        raise UsageError(
            f"--data synthetic makes images, but the model takes {shapes} (one N×C×H×W input needed); give --data"
        )
    return tuple(inputs[0].shape[1:])


def synthesize(
    model: nn.Module,
    example_inputs,
    settings: SynthesisSettings | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SyntheticData:
    """``settings.count`` images (fewer when ``settings.seconds`` runs out) that make ``model``'s BatchNorms see
    their training statistics; see the module docstring. ``model`` is not changed."""
    s = settings or SynthesisSettings()
    s.check()
    shape = image_shape(example_inputs)
    net = _frozen_copy(model)
    sizes = [min(s.batch_size, s.count - i) for i in range(0, s.count, s.batch_size)]
    start, made, world = clock(), [], parallel.world()
    probe = BatchNormProbe(net)
    bar = tqdm(
        total=len(sizes) * s.steps,
        desc="synthesising inputs",
        disable=not (s.progress and parallel.is_main()),
    )
    with retained_heap(s.retain_heap):  # the steps free and re-fault their activations otherwise
        try:
            for first in range(0, len(sizes), world):
                k = first + parallel.rank()
                mine = _make_batch(net, probe, (k, sizes[k]), shape, s, bar) if k < len(sizes) else None
                made += [b for b in parallel.gather_objects(mine) if b is not None]
                elapsed = parallel.broadcast_object(clock() - start)
                if s.seconds is not None and elapsed * (1 + world / len(made)) > s.seconds:
                    break  # another round, as long as the ones so far on average, would overrun the cap
        finally:
            probe.close()
            bar.close()
    x = torch.cat([b["x"] for b in made])
    record = SynthesisRecord(
        len(x), s.count, round(clock() - start, 1), _mean(made, "start"), _mean(made, "end"),
        {k: v for k, v in asdict(s).items() if k != "progress"}, world,
    )  # fmt: skip
    return SyntheticData(x, None, f"{SYNTHETIC}:{len(x)}", record=record)


def _mean(batches: list[dict], key: str) -> float:
    return round(sum(b[key] * len(b["x"]) for b in batches) / sum(len(b["x"]) for b in batches), 5)


def _frozen_copy(model: nn.Module) -> nn.Module:
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)  # 4-D inputs: faster convolutions on CPU


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.enable_grad()  # gradients to the inputs, also when called under no_grad
def _make_batch(net: nn.Module, probe: BatchNormProbe, which: tuple[int, int], shape, s, bar) -> dict:
    """Batch ``which = (index, size)``: seeded noise, then ``s.steps`` Adam steps on L (module docstring), the
    first ``s.coarse`` share of them at half resolution."""
    index, size = which
    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + index)
    device = _device(net)
    coarse_steps = min(round(s.coarse * s.steps), s.steps - 1) if min(shape[-2:]) >= 2 else 0  # ≥ 1 step fine
    side = (shape[-2] // 2, shape[-1] // 2) if coarse_steps else tuple(shape[-2:])
    x = torch.randn((size, shape[0], *side), generator=gen).to(device)
    low, high = _box_tensors(s.box, shape[0], device)
    targets = (torch.arange(size) + index * s.batch_size).to(device)
    x, opt = _leaf(x, (low, high), s.lr)
    start = None
    for step in range(s.steps):
        if step == coarse_steps and step:  # coarse phase over: refine the upsampled images at full size
            x, opt = _leaf(_upsampled(x, shape), (low, high), s.lr)
        for group in opt.param_groups:
            group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * step / s.steps))
        bn_loss, loss = _loss(net, probe, _view(_upsampled(x, shape), gen, s), targets, s)
        start = float(bn_loss.detach()) if start is None else start
        (grad,) = torch.autograd.grad(loss, x)
        x.grad = grad
        opt.step()
        _project_(x, low, high)
        bar.update(1)
    with torch.no_grad():
        net(x)
        end = float(probe.take())
    return {"x": x.detach().contiguous().cpu(), "start": start, "end": end}


def _leaf(x: torch.Tensor, box, lr: float) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """``x`` projected into the pixel box, as the channels-last leaf Adam optimises, and that optimiser."""
    x = x.detach().contiguous(memory_format=torch.channels_last)
    _project_(x, *box)
    x.requires_grad_(True)
    return x, torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9))


def _upsampled(x: torch.Tensor, shape) -> torch.Tensor:
    """``x`` at the model's input size: bilinear upsampling of a half-resolution batch, else ``x`` itself."""
    if tuple(x.shape[-2:]) == tuple(shape[-2:]):
        return x
    return nn.functional.interpolate(x, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)


def _box_tensors(box, channels: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``box`` as (1, C, 1, 1) bounds; a single value per side applies to every channel."""
    if box is None:
        return None, None
    bounds = []
    for side in box:
        values = torch.tensor(side, dtype=torch.float32, device=device).flatten()
        if values.numel() not in (1, channels):
            raise UsageError(f"synthesis pixel box: {values.numel()} values for {channels} input channels")
        bounds.append(values.expand(channels).reshape(1, channels, 1, 1))
    low, high = bounds
    if (low >= high).any():
        raise UsageError(f"synthesis pixel box: every low must be below its high, got {box}")
    return low, high


@torch.no_grad()
def _project_(x: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None) -> None:
    if low is not None:
        x.clamp_(low, high)


def _view(x: torch.Tensor, gen: torch.Generator, s: SynthesisSettings) -> torch.Tensor:
    """What the model sees this step: ``x`` shifted by up to ``s.jitter`` pixels and maybe flipped."""
    jitter = s.jitter if s.jitter is not None else max(1, round(min(x.shape[-2:]) / 16))
    if jitter:
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if s.flip and bool(torch.rand((), generator=gen) < 0.5):
        x = x.flip(3)
    return x


def _loss(net, probe, view, targets, s) -> tuple[torch.Tensor, torch.Tensor]:
    out = net(view)
    bn_loss = probe.take()
    loss = bn_loss
    if s.prior_weight:
        dh, dw = view.diff(dim=2), view.diff(dim=3)
        loss = loss + s.prior_weight * (dh.square().mean() + dw.square().mean())
    if s.output_weight and isinstance(out, torch.Tensor) and out.dim() == 2:
        loss = loss + s.output_weight * nn.functional.cross_entropy(out, targets % out.shape[1])
    return bn_loss, loss
