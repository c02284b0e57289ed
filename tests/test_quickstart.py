"""The README's quickstart (``examples/quickstart.py``), piece by piece and whole: the digits data, the fixed-epoch
training, the CLI compress, the reload, the fine-tune that wins accuracy back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "sklearn", reason="the quickstart trains on scikit-learn's digits: pip install -e .[examples]"
)

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.fixture(scope="module")
def quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_digits_are_scaled_to_the_model_input(quickstart):
    x, y = quickstart.digits_tensors()
    assert x.shape == (1797, 1, quickstart.SIZE, quickstart.SIZE) and y.shape == (1797,)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and set(y.tolist()) == set(range(10))


def test_training_is_fixed_and_learns(quickstart):
    from convslim.models.digits import digits_cnn

    x, y = quickstart.digits_tensors()
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = digits_cnn()
        quickstart.train(model, x[:1300], y[:1300], epochs=2)
        models.append(model)
    assert quickstart.accuracy(models[0], x[1500:], y[1500:]) > 0.5  # chance is 0.1
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # a fixed number of epochs: the same model on any machine


def test_the_whole_quickstart_runs(quickstart, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--epochs", "1", "--out", str(out)])
    assert quickstart.main() == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy: original" in printed and "compressed and fine-tuned" in printed
    assert (out / "model.onnx").is_file() and (out / "report.json").is_file()
    assert (out.with_name("out-finetuned") / "report.json").is_file()
