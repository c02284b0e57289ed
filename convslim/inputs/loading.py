"""Loading a trained model without running code the user did not ask to run.

Accepted inputs:
- a state_dict file (``torch.save(model.state_dict())``, also wrapped as ``{"state_dict": ...}`` or
  ``{"model": ...}``, with ``module.`` prefixes from DataParallel) plus an architecture ``module.path:factory``;
- a ``torch.export`` archive (``.pt2``);
- a pickled whole module (``torch.save(model)``) only with ``trust_pickle=True``, since unpickling runs code.
TorchScript archives are refused: their compiled graph cannot be rewritten.

Example:
    >>> model = load_model("resnet20.th", arch="convslim.models:resnet20")
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from convslim.errors import ModelLoadError, UsageError
from convslim.passes.trace import without_export_guards

STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def load_model(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: str | dict | None = None,
    import_paths: tuple[str, ...] = (),
    trust_pickle: bool = False,
    device: str = "cpu",
) -> nn.Module:
    """Load ``path`` as an eval-mode ``nn.Module`` on ``device``; every failure is a one-line ``ModelLoadError``."""
    path = Path(path)
    check_device(device)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    kind = _archive_kind(path)
    if kind == "onnx":
        raise ModelLoadError(
            f"{path} is already an ONNX model; give the PyTorch model it came from (state_dict + --arch, or .pt2)"
        )
    if kind == "unknown":
        raise ModelLoadError(
            f"{path} is not a PyTorch file (expected torch.save output or a torch.export .pt2), or it is "
            "truncated or corrupt; check the path"
        )
    if kind == "torchscript":
        raise ModelLoadError(
            f"{path} is a TorchScript archive, whose compiled graph cannot be rewritten; save the model's "
            "state_dict (torch.save(model.state_dict(), ...)) and pass --arch, or export it with torch.export (.pt2)"
        )
    if kind == "export":
        return _checked(_load_exported(path, device), path)
    obj = _load_weights_only(path, device, trust_pickle)
    if isinstance(obj, nn.Module):
        return _checked(obj.to(device).eval(), path)
    state = unwrap_state_dict(obj, path)
    if arch is None:
        raise ModelLoadError(f"{path} holds a state_dict: pass --arch module.path:factory to build the model")
    model = build_arch(arch, arch_kwargs, import_paths)
    _load_state(model, state, path, arch)
    return _checked(model.to(device).eval(), path)


def check_device(device: str) -> torch.device:
    """``device`` as a torch device that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else a one-line
    ``UsageError`` saying why (checked before any work: loading a model onto a missing GPU fails in torch.load
    with a message about the file)."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {device!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if found.type == "cpu":
        return found
    backend = getattr(torch, found.type, None) if found.type != "mps" else torch.backends.mps
    if backend is None or not hasattr(backend, "is_available"):
        raise UsageError(f"--device {device}: convslim runs on cpu or cuda (cuda:N)")
    if not backend.is_available():
        cpu_only = found.type == "cuda" and torch.version.cuda is None
        build = f"torch {torch.__version__}" + (", a CPU-only build" if cpu_only else " finds none")
        raise UsageError(f"--device {device}: {found.type} is not available here ({build}); use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if found.index is not None and found.index >= count:
        raise UsageError(
            f"--device {device}: this machine has {count} {found.type} device(s), numbered from 0"
        )
    return found


def _checked(model: nn.Module, path: Path) -> nn.Module:
    check_finite(model, str(path))
    return model


def check_finite(model: nn.Module, source: str = "the model") -> None:
    """Refuse weights holding NaN or ±inf: every form's factorisation (SVD, least squares) would fail on them."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, value in tensors:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelLoadError(
                f"{source}: {name} holds NaN or infinite values; the weights are damaged, save them again "
                "from a healthy training run"
            )


def load_state_dict(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file (wrapped in ``{"state_dict": ...}`` etc., ``module.`` prefixes removed);
    no code runs. Anything else is a one-line ``ModelLoadError``."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    obj = _load_weights_only(path, device, trust_pickle=False)
    if isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path} holds a pickled module, not a state_dict")
    return unwrap_state_dict(obj, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file exactly as saved (keys untouched; no code runs), e.g. a compress output's
    ``compressed_state_dict.pt``; unreadable, truncated or corrupt files are a one-line ``ModelLoadError``."""
    path = Path(path)
    obj = _load_weights_only(path, "cpu", trust_pickle=False)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return dict(obj)


def _archive_kind(path: Path) -> str:
    """ "export", "torchscript", "pickle" (zip torch.save), "legacy" (old torch.save), "onnx" or "unknown"."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80":  # pickle protocol 2+: the old torch.save format
            return "legacy"
        return "onnx" if _looks_like_onnx(path) else "unknown"
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        return "legacy"
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "export"
    if any("/code/__torch__" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def _looks_like_onnx(path: Path) -> bool:
    if path.suffix.lower() == ".onnx":
        return True
    with path.open("rb") as fh:
        if fh.read(1) != b"\x08":  # protobuf field 1 (ir_version), varint: how every ONNX file starts
            return False
    try:
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # noqa: BLE001  (any parse failure simply means "not ONNX")
        return False


def _load_exported(path: Path, device: str) -> nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot read the torch.export archive ({_short(exc)})") from None
    return without_export_guards(program.module()).to(device).eval()


def _load_weights_only(path: Path, device: str, trust_pickle: bool):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # only a pickle naming classes holds a pickled object
            raise ModelLoadError(
                f"{path} is not a PyTorch file, or it is truncated or corrupt; check the path"
            ) from None
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} holds a pickled module, and unpickling runs arbitrary code: save a state_dict and pass "
                "--arch, or re-run with --trust-pickle if you trust where the file came from"
            ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as exc:
        raise ModelLoadError(
            f"{path}: not a readable PyTorch file, truncated or corrupt ({_short(exc)})"
        ) from None
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: could not unpickle the module ({_short(exc)})") from None


def unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded state_dict, unwrapped from ``STATE_DICT_WRAPPER_KEYS`` and ``module.`` prefixes."""
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, neither a state_dict nor a module")
    for key in STATE_DICT_WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} holds a dict without tensors; expected a state_dict")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def build_arch(
    arch: str, arch_kwargs: str | dict | None = None, import_paths: tuple[str, ...] = ()
) -> nn.Module:
    """Build the model from ``module.path:factory`` or ``file.py:factory`` with keyword arguments."""
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--arch {arch!r}: expected module.path:factory, e.g. convslim.models:resnet20")
    kwargs = _parse_kwargs(arch_kwargs)
    for directory in import_paths:
        if directory not in sys.path:
            sys.path.insert(0, str(Path(directory).resolve()))
    module = _import(module_name)
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"--arch {arch!r}: {module_name} has no attribute {attr!r}")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UsageError(
            f"--arch {arch!r}: calling it with {kwargs} failed ({exc}); check --arch-kwargs"
        ) from None
    except Exception as exc:  # noqa: BLE001  (the user's factory: any failure is theirs to fix, in one line)
        raise UsageError(
            f"--arch {arch!r}: the factory raised {type(exc).__name__}: {_short(exc)}; fix the factory or "
            "--arch-kwargs (--debug shows the traceback)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"--arch {arch!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _import(module_name: str):
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_file():
            raise UsageError(f"--arch: {file} does not exist")
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001  (the user's file: report it in one line)
            raise UsageError(
                f"--arch: running {file} raised {type(exc).__name__}: {_short(exc)}; fix that file"
            ) from exc
        return module
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--arch: cannot import {module_name} ({exc}); add its folder with --import-path"
        ) from None
    except Exception as exc:  # noqa: BLE001  (the user's module failed while importing: theirs to fix)
        raise UsageError(
            f"--arch: importing {module_name} raised {type(exc).__name__}: {_short(exc)}; fix that module"
        ) from exc


def _parse_kwargs(arch_kwargs: str | dict | None) -> dict:
    if arch_kwargs is None or isinstance(arch_kwargs, dict):
        return dict(arch_kwargs or {})
    try:
        kwargs = json.loads(arch_kwargs)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--arch-kwargs is not valid JSON ({exc.msg}); e.g. '{{\"num_classes\": 10}}'"
        ) from None
    if not isinstance(kwargs, dict):
        raise UsageError("--arch-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return kwargs


def _load_state(model: nn.Module, state: dict, path: Path, arch: str) -> None:
    own = model.state_dict()
    wrong = [
        f"{k} is {list(v.shape)} in the file but {list(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ModelLoadError(
            f"{path} does not fit --arch {arch}: {wrong[0]}{more}; check --arch and --arch-kwargs"
        )
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:3])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:3])}")
    if problems:
        raise ModelLoadError(f"{path} does not fit --arch {arch}: {'; '.join(problems)}; check --arch-kwargs")


def parse_input_shapes(text: str) -> list[tuple[int, ...]]:
    """``"1,3,32,32"`` or ``"1,3,32,32;1,10"`` (several inputs) → list of shapes."""
    shapes = []
    for part in text.split(";"):
        try:
            dims = tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise UsageError(f"--input-shape {text!r}: expected integers like 1,3,32,32") from None
        if not dims or any(d < 1 for d in dims):
            raise UsageError(f"--input-shape {text!r}: every dimension must be a positive integer")
        shapes.append(dims)
    return shapes


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
