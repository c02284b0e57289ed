"""Small models for CLI tests, loaded by path (``--arch tests/cli_models.py:small``): one healthy model and the
ones a user gets wrong (a factory that raises, dict / tuple outputs, a branch on tensor data)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class DictOut(Small):
    def forward(self, x):
        y = super().forward(x)
        return {"logits": y, "features": y * 2}


class TupleOut(Small):
    def forward(self, x):
        y = super().forward(x)
        return y, torch.sigmoid(y)


class Branchy(Small):
    def forward(self, x):
        y = torch.relu(self.conv1(x))
        if y.sum() > 0:  # a branch on tensor data: torch.export cannot follow it
            y = self.conv2(y)
        return self.fc(y.mean((2, 3)))


class Nested(nn.Module):
    """Convs under a dotted prefix (``block.0``, ``block.1``) and one whose name only starts alike."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.block_extra = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.block_extra(self.block(torch.relu(self.stem(x)))).mean((2, 3))


class Three(Small):
    """``Small`` and one more conv of the same shape: a plan for either does not fit the other."""

    def __init__(self, width: int = 8):
        super().__init__(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class LogOut(Small):
    """Logits through a log: NaN for every negative logit, in PyTorch and ONNX alike."""

    def forward(self, x):
        return torch.log(super().forward(x))


class InSize(nn.Module):
    """Runs only at its declared pytorchcv-style ``in_size`` (40×40: no common size a probe would try)."""

    in_size = (40, 40)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 40 * 40, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def small(width: int = 8) -> Small:
    return Small(width)


def three() -> Three:
    return Three()


def log_out() -> LogOut:
    return LogOut()


def in_size() -> InSize:
    return InSize()


def broken() -> Small:
    raise ValueError("checkpoint server unreachable")


def dict_out() -> DictOut:
    return DictOut()


def tuple_out() -> TupleOut:
    return TupleOut()


def branchy() -> Branchy:
    return Branchy()


def nested() -> Nested:
    return Nested()


MODELS = Path(__file__).resolve()


def arch(factory: str = "small") -> list[str]:
    """The CLI's model flags for a factory of this file."""
    return ["--arch", f"{MODELS}:{factory}", "--input-shape", "1,3,16,16"]


def save_small(folder: Path) -> Path:
    """A state_dict of ``Small`` saved in ``folder``, the model file the CLI tests pass."""
    path = folder / "small.pt"
    torch.save(Small().state_dict(), path)
    return path


def fails_cleanly(capsys, argv: list[str], out: Path, message: str, usage_line: bool = False) -> str:
    """The CLI refuses ``argv`` the way users should see it: exit 2, ``message`` in one clean line on stderr
    (after argparse's usage line when ``usage_line``), no traceback, nothing written to ``out``."""
    from convslim.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == (2 if usage_line else 1), err
    assert not out.exists()
    return err
