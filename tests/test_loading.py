"""Loading: state_dict + --arch (wrapped, module. prefixes), .pt2, pickled modules only when trusted,
TorchScript refused, and clear one-line errors for bad files."""

from __future__ import annotations

import pytest
import torch

from convslim.errors import ModelLoadError, UsageError
from convslim.inputs.loading import load_model, parse_input_shapes
from convslim.models import resnet20

ARCH = "convslim.models:resnet20"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20().eval()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_with_wrapper_and_module_prefix(tmp_path, model):
    path = tmp_path / "ckpt.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model(path, arch=ARCH)
    assert _same_weights(loaded, model) and not loaded.training


def test_state_dict_needs_arch(tmp_path, model):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="pass --arch"):
        load_model(path)


def test_arch_that_does_not_fit(tmp_path, model):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model(path, arch="convslim.models:resnet32")


def test_arch_from_file_with_kwargs(tmp_path):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\ndef build(width=4):\n    return nn.Sequential(nn.Conv2d(3, width, 3))\n"
    )
    state = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3)).state_dict()
    torch.save(state, tmp_path / "w.pt")
    loaded = load_model(
        tmp_path / "w.pt", arch="mynet:build", arch_kwargs='{"width": 6}', import_paths=(str(tmp_path),)
    )
    assert torch.equal(loaded[0].weight, state["0.weight"])


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("nocolon", None, "expected module.path:factory"),
        ("no_such_module_xyz:f", None, "cannot import"),
        ("convslim.models:nope", None, "has no attribute"),
        (ARCH, "{bad json", "not valid JSON"),
    ],
)
def test_bad_arch(tmp_path, model, arch, kwargs, message):
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UsageError, match=message):
        load_model(tmp_path / "sd.pt", arch=arch, arch_kwargs=kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "absent.pt", arch=ARCH)


def test_truncated_file(tmp_path, model):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt|not a readable"):
        load_model(path, arch=ARCH)


def test_torchscript_is_refused(tmp_path, model):
    path = tmp_path / "ts.pt"
    torch.jit.script(model).save(str(path))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(path)


def test_pickled_module_needs_trust(tmp_path, model):
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path)
    assert _same_weights(load_model(path, trust_pickle=True), model)


def test_torch_export_archive(tmp_path, model):
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("text", "shapes"), [("1,3,32,32", [(1, 3, 32, 32)]), ("2x3x8x8;2,5", [(2, 3, 8, 8), (2, 5)])]
)
def test_parse_input_shapes(text, shapes):
    assert parse_input_shapes(text) == shapes


@pytest.mark.parametrize("text", ["", "1,a,3", "1,0,3"])
def test_bad_input_shapes(text):
    with pytest.raises(UsageError):
        parse_input_shapes(text)
