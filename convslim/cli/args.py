"""The CLI's argument groups and what turns parsed arguments into library calls' inputs.

The "form settings" group is built from every registered form's ``Option``s (``registry_options``), so a new form
needs no edit here; subcommands (``convslim.cli.COMMANDS``) pick the groups they need.
"""

from __future__ import annotations

import argparse
import sys

import torch

from convslim.core.samples import INT8_CALIBRATION
from convslim.errors import UsageError
from convslim.finetune import FinetuneSettings
from convslim.finetune.datafree import SYNTHETIC_RECIPE
from convslim.finetune.settings import DISTILL_LOSSES, OPTIMIZERS, SYNC_BATCHNORM, TEACHER_PRECISIONS
from convslim.inputs.sets import HeldOut, scored_set, training_set


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "model", help="state_dict file (with --arch), torch.export .pt2, or pickled module (--trust-pickle)"
    )
    g.add_argument("--arch", help="module.path:factory (or file.py:factory) that builds the model")
    g.add_argument("--arch-kwargs", help="JSON object of keyword arguments for the factory")
    g.add_argument("--import-path", action="append", default=[], help="folder to add to the import path")
    g.add_argument(
        "--trust-pickle", action="store_true", help="allow loading a pickled module (runs its code)"
    )
    g.add_argument("--input-shape", required=True, help="e.g. 1,3,32,32; several inputs separated by ';'")
    g.add_argument("--device", default="cpu", help="torch device for rewriting and fine-tuning")


def registry_options() -> dict[str, list]:
    """Every registered form's options grouped by name: {"rank": [(form, Option), ...], ...}."""
    from convslim.convert import FORMS

    grouped: dict[str, list] = {}
    for form in FORMS.values():
        for option in form.options:
            grouped.setdefault(option.name, []).append((form, option))
    return grouped


def _option_help(owners: list) -> str:
    parts: dict[str, list[str]] = {}  # help text -> "form default" notes, so shared texts appear once
    for form, option in owners:
        note = f"{form.name}: {option.default}" if option.default is not None else ""
        parts.setdefault(option.help, []).extend([note] if note else [])
    shown = []
    for text, defaults in parts.items():
        shown.append(f"{text} (default {', '.join(defaults)})" if defaults else text)
    return "; ".join(shown)


def add_form_args(p: argparse.ArgumentParser) -> None:
    from convslim.convert import FORMS

    g = p.add_argument_group("form settings (each applies to the forms its help names)")
    names = ", ".join(FORMS)
    g.add_argument(
        "--to", default="dwsep", help=f"form: {names}; or auto / a,b with a budget (default dwsep)"
    )
    for name, owners in registry_options().items():
        option = owners[0][1]
        kwargs = {"dest": name, "default": None, "help": _option_help(owners)}
        if option.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = option.type
            choices = sorted({c for _, o in owners for c in o.choices})
            if choices:
                kwargs["choices"] = choices
        g.add_argument(option.flag, **kwargs)
    add_exclude_arg(g)


def add_exclude_arg(g) -> None:
    g.add_argument("--exclude", action="append", default=[], help="layer name (or prefix) to leave alone")


def add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", required=True, help="output folder (created; must not hold files unless --overwrite)"
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace the output folder, removing what it holds"
    )


def add_check_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification and timing")
    g.add_argument("--tolerance", type=float, default=1e-4, help="ONNX parity: max abs err / output scale")
    g.add_argument("--batch-sizes", default="1,32", help="batch sizes to time")
    g.add_argument("--no-speed", action="store_true", help="skip latency measurement")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def form_options(args: argparse.Namespace) -> dict:
    """The form options the user gave (0 and False included: only an absent option is left out)."""
    return {k: getattr(args, k) for k in registry_options() if getattr(args, k, None) is not None}


def _tuned_flags(d: FinetuneSettings) -> tuple:
    """(flag, type, help) of the recipe's numeric settings, with their defaults in the help."""
    return (
        ("--batch-size", int, f"fine-tuning batch size (default {d.batch_size})"),
        ("--lr", float, f"peak learning rate of phase A's {d.schedule} schedule (default {d.lr:g})"),
        ("--distill-lr-scale", float, f"phase B's peak: --lr times this (default {d.distill_lr_scale:.4g})"),
        ("--weight-decay", float, f"weight decay (default {d.weight_decay:g})"),
        ("--temperature", float, f"temperature T of --distill-loss kl (default {d.temperature:g})"),
        ("--ce-weight", float, f"cross-entropy weight when labels exist (default {d.ce_weight:g})"),
        ("--feature-weight", float, f"end-to-end feature matching weight (default {d.feature_weight:g})"),
        ("--feature-fraction", float, f"share of stage 2 spent block-wise (default {d.feature_fraction:g})"),
        (
            "--mixup",
            float,
            f"mixup Beta(α, α) on inputs, targets from the teacher; 0: off (default {d.mixup:g}; "
            f"{SYNTHETIC_RECIPE['mixup']:g} with --data synthetic)",
        ),
        ("--cutout", int, f"side of a square erased from each training view; 0: off (default {d.cutout})"),
        ("--calibration-samples", int, f"samples for stage 1 (default {d.calibration_samples})"),
    )


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and fine-tuning (fine-tunes when --data is given)")
    g.add_argument(
        "--data",
        help="training data: image folder (class sub-folders), .npz (x, y) or .pt; or synthetic[:N] to fine-tune "
        "without data, on N images made from the model's BatchNorm statistics (default N 1024)",
    )
    g.add_argument("--val-data", help="validation data (same kinds): top-1, or agreement with the original")
    g.add_argument(
        "--val-split",
        type=float,
        help="without --val-data: the share of --data held out of fine-tuning and scored on, stratified by "
        f"label; 0 trains on all (default {HeldOut.SHARE:g}, at most {HeldOut.MOST} images)",
    )
    g.add_argument("--resize", help="resize images to H,W (or one size for both)")
    g.add_argument(
        "--mean", help="per-channel mean subtracted after scaling to [0,1], e.g. 0.485,0.456,0.406"
    )
    g.add_argument(
        "--std", help="per-channel std divided by after subtracting --mean, e.g. 0.229,0.224,0.225"
    )
    g.add_argument(
        "--finetune-steps", type=int, help="optimiser steps (default 1000 without --finetune-minutes)"
    )
    g.add_argument("--finetune-minutes", type=float, help="wall-time budget for the whole fine-tune")
    d = FinetuneSettings()  # the one home of the recipe's defaults (see README "Fine-tuning recipe")
    tuned = _tuned_flags(d)
    for flag, kind, text in tuned:
        field = flag[2:].replace("-", "_")
        default = None if field in SYNTHETIC_RECIPE else getattr(d, field)  # None: the data decides
        g.add_argument(flag, type=kind, default=default, help=text)
    for flag, choices, text in _choice_flags():
        default = getattr(d, flag[2:].replace("-", "_"))
        g.add_argument(flag, choices=choices, default=default, help=f"{text} (default {default})")
    g.add_argument("--no-augment", action="store_true", help="no random crop + flip on image batches")
    g.add_argument(
        "--no-teacher-mirror",
        action="store_true",
        help="replay the teacher's outputs on each view alone, not averaged with its mirror image's",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for data order and augmentation (default 0)")


def data_sets(args: argparse.Namespace, model, inputs) -> dict:
    """The data flags given (--data, --val-data, --calib-data), loaded and checked against the model's inputs
    and classes (``convslim.inputs.sets.load_sets``); ``--data synthetic[:N]`` makes N images from the model
    (``convslim.inputs.synthetic``), within its share of --finetune-minutes."""
    from convslim.inputs.data import Preprocess, parse_floats, parse_size
    from convslim.inputs.sets import load_sets
    from convslim.inputs.synthetic import parse_synthetic

    calib = getattr(args, "calib_data", None)
    count = parse_synthetic(args.data)
    if args.val_data and not (args.data or calib):
        raise UsageError("--val-data needs --data (the training data) or --calib-data as well")
    files = {
        "--data": None if count is not None else args.data,
        "--val-data": args.val_data,
        "--calib-data": calib,
    }
    preprocess = Preprocess(
        parse_size(args.resize), parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    )
    sets = load_sets(model, inputs, files, preprocess, held_out(args))
    for flag, data in sets.items():
        if data.skipped:
            print(f"convslim: {flag}: skipped {data.skipped} unreadable image(s)", file=sys.stderr)
    if count is not None:
        sets["--data"] = _synthetic(args, model, inputs, count)
    return sets


def held_out(args: argparse.Namespace) -> HeldOut:
    """The share of --data held out of fine-tuning (--val-split; refused beside --val-data, which is one)."""
    if args.val_split is not None and args.val_data:
        raise UsageError("--val-split splits --data when no --val-data is given; drop one of them")
    return HeldOut(args.val_split, args.seed)


def _synthetic(args: argparse.Namespace, model, inputs, count: int):
    from convslim import parallel
    from convslim.finetune.datafree import generation_settings
    from convslim.finetune.hook import check_finetunable
    from convslim.inputs.synthetic import synthesize

    check_finetunable(model, inputs)
    settings = generation_settings(count, args.finetune_minutes, seed=args.seed, progress=not args.quiet)
    made = synthesize(model, inputs, settings)
    if parallel.is_main():
        print(f"convslim: no training data: {made.record.describe()}", file=sys.stderr)
    return made


def finetune_inputs(args: argparse.Namespace, model, inputs, sets: dict):
    """(hook, calibration batch) from the loaded data (``convslim.finetune.from_data``), or (None, None) without
    --data. The hook trains on --data less its held-out share and scores on --val-data or that share; the
    calibration batch is the first images of --data, as without a split. On synthetic --data the --calib-data
    images, when given, join the synthetic ones (``convslim.finetune.from_synthetic``)."""
    from convslim.finetune import from_data, from_synthetic
    from convslim.finetune.hook import first_inputs
    from convslim.inputs.synthetic import SyntheticData

    if "--data" not in sets:
        return None, None
    settings = recipe_settings(args) | {"steps": args.finetune_steps, "minutes": args.finetune_minutes}
    settings.update(augment=not args.no_augment, teacher_mirror=not args.no_teacher_mirror)
    settings.update(seed=args.seed, device=args.device, progress=not args.quiet)
    train = training_set(sets)
    if isinstance(train, SyntheticData):  # nothing is held out of made images
        loaded = from_synthetic(model, inputs, train, sets.get("--calib-data"), scored_set(sets), **settings)
        return loaded.hook, loaded.calibration
    loaded = from_data(model, inputs, train, scored_set(sets), **settings)
    return loaded.hook, first_inputs(sets["--data"], args.device)


def add_save_synthetic_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save-synthetic",
        action="store_true",
        help="with --data synthetic: also write the images to --out as synthetic.pt (reusable as --data)",
    )


def _choice_flags() -> tuple:
    """(flag, choices, help) of the recipe's settings that take one of a few words."""
    return (
        ("--optimizer", OPTIMIZERS, "optimiser"),
        (
            "--distill-loss",
            DISTILL_LOSSES,
            "end-to-end distillation: mse, the squared error of the logits, or kl at --temperature",
        ),
        (
            "--sync-batchnorm",
            SYNC_BATCHNORM,
            "under torchrun, BatchNorm statistics over the global batch; auto: when a rank gets under 32 "
            "samples per step",
        ),
        (
            "--teacher-precision",
            TEACHER_PRECISIONS,
            "stage 2's teacher forwards; auto: bfloat16 autocast on a CPU with native bfloat16 arithmetic "
            "(avx512_bf16, amx_bf16), else float32",
        ),
        (
            "--student-precision",
            TEACHER_PRECISIONS,
            "stage 2's student forwards (losses and optimiser stay float32); auto: as --teacher-precision",
        ),
    )


def files_to_save(args: argparse.Namespace, sets: dict) -> dict:
    """The extra output files asked for (``Output.files``): ``synthetic.pt`` with ``--save-synthetic``."""
    from convslim.inputs.synthetic import SyntheticData

    if not getattr(args, "save_synthetic", False):
        return {}
    made = sets.get("--data")
    if not isinstance(made, SyntheticData):
        raise UsageError("--save-synthetic saves the images --data synthetic makes; add --data synthetic[:N]")
    return {"synthetic.pt": lambda path: torch.save({"x": made.x}, path)}


RECIPE = ("batch_size", "lr", "weight_decay", "temperature", "ce_weight", "feature_weight")
RECIPE += ("feature_fraction", "mixup", "cutout", "calibration_samples", "optimizer", "sync_batchnorm")
RECIPE += ("distill_loss", "distill_lr_scale", "teacher_precision", "student_precision")


def recipe_settings(args: argparse.Namespace) -> dict:
    """The fine-tuning settings the user gave; the rest keep ``FinetuneSettings``' defaults."""
    return {k: getattr(args, k) for k in RECIPE if getattr(args, k, None) is not None}


def add_runtime_args(p: argparse.ArgumentParser, deploy: bool = True) -> None:
    """The runtime target's choices come from its registry: a new target needs no CLI edit."""
    from convslim.runtime.targets import get_target, target_names

    g = p.add_argument_group("runtime target and export")
    described = "; ".join(f"{n}: {get_target(n).description}" for n in target_names())
    g.add_argument(
        "--runtime", choices=target_names(), help=f"where the model runs (default cpu). {described}"
    )
    g.add_argument("--int8", action="store_true", help="same as --runtime cpu-int8")
    if not deploy:
        return
    g.add_argument("--calib-data", help="int8 calibration images (default: --data); same kinds as --data")
    g.add_argument(
        "--int8-exclude",
        action="append",
        default=[],
        help="node name, op type (Conv, Gemm) or kind ('depthwise conv', 'linear', ...) to keep in fp32",
    )
    g.add_argument(
        "--opset", type=int, help="ONNX opset of model.onnx and original.onnx (default: exporter's)"
    )
    g.add_argument(
        "--static-shape",
        action="store_true",
        help="fixed batch and image size (from --input-shape) in the ONNX",
    )


def runtime_name(args: argparse.Namespace) -> str:
    if args.int8 and args.runtime not in (None, "cpu-int8"):
        raise UsageError(
            f"--int8 means --runtime cpu-int8; it cannot be combined with --runtime {args.runtime}"
        )
    return "cpu-int8" if args.int8 else (args.runtime or "cpu")


def deploy_settings(args: argparse.Namespace, sets: dict):
    """DeploySettings from the runtime flags; int8 calibrates on --calib-data, else --data (first 512 images),
    and checks accuracy on --val-data, else on images of the calibration source held back from calibration."""
    from convslim.runtime.deploy import DeploySettings
    from convslim.runtime.export import ExportSettings
    from convslim.runtime.int8 import Calibration, Int8Settings

    source = sets.get("--calib-data") or training_set(sets)
    calibration = None
    if source is not None:
        calibration = Calibration.split(source, INT8_CALIBRATION, scored_set(sets))
        if source is sets.get("--data") and scored_set(sets) is None:
            calibration.held_source += "; fine-tuning trains on --data too"
    return DeploySettings(
        runtime=runtime_name(args),
        export=ExportSettings(opset=args.opset, static_shape=args.static_shape),
        int8=Int8Settings(exclude=tuple(args.int8_exclude)),
        calibration=calibration,
    )


def add_budget_args(p: argparse.ArgumentParser, limits: bool = True) -> None:
    """The budget flags; ``limits=False``: only ``--plan-batch`` (for a caller that sets the budget itself)."""
    g = p.add_argument_group("budget (per-layer planning on measured ORT latency; use --to auto or --to a,b)")
    g.add_argument(
        "--plan-batch",
        type=int,
        help=f"batch size the plan is measured at (default {PLAN_BATCH}; with --static-shape, the batch of "
        "--input-shape: the only one such a model runs at)",
    )
    g.add_argument(
        "--plan-threads",
        help="ORT intra-op threads per session in the planner's whole-model rounds: a number, or 'default' "
        "(ORT's own, one per core: as a deployed session runs; 1 reads steadier on a machine shared with "
        "other work)",
    )
    if not limits:
        return
    g.add_argument(
        "--target-speedup", type=float, help="predicted whole-model ORT speedup to reach, e.g. 2.5"
    )
    g.add_argument("--target-macs", type=float, help="fraction of the original conv MACs to keep, e.g. 0.4")
    g.add_argument("--max-error", type=float, help="largest predicted relative output error, e.g. 0.1")


PLAN_BATCH = 32


def plan_threads(args: argparse.Namespace) -> int | None:
    """--plan-threads: None (ORT's default) when not given or 'default', else a positive integer (checked here,
    not by argparse's ``type``, so that a bad value gets one line rather than the usage block)."""
    text = getattr(args, "plan_threads", None)
    if text is None or text == "default":
        return None
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise UsageError(f"--plan-threads {text}: give a positive thread count or 'default'")
    return value


def plan_batch(args: argparse.Namespace) -> int:
    """--plan-batch, or its default (``compress`` plans a --static-shape model at its one batch itself)."""
    return PLAN_BATCH if args.plan_batch is None else args.plan_batch


def budget_options(args: argparse.Namespace) -> dict:
    keys = ("target_speedup", "target_macs", "max_error")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def no_ignored_form_options(args: argparse.Namespace) -> None:
    """Form options mean nothing when a plan file or the budgeted planner sets every layer: refuse, not ignore."""
    from convslim.api import wants_budgeted

    given = form_options(args)
    if not given:
        return
    flags = ", ".join("--" + k.replace("_", "-") for k in given)
    if getattr(args, "plan", None):
        raise UsageError(f"{flags}: --plan already fixes every layer's setting; drop {flags} or --plan")
    if wants_budgeted(args.to, budget_options(args)):
        raise UsageError(
            f"{flags}: with a budget or --to auto / a,b the planner chooses each layer's setting; drop {flags}"
        )


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: expected integers like 1,32") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes {text!r}: expected positive integers like 1,32")
    return sizes


def load_model_and_inputs(args: argparse.Namespace):
    from convslim.inputs.loading import load_model, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    model = load_model(
        args.model, args.arch, args.arch_kwargs, tuple(args.import_path), args.trust_pickle, args.device
    )
    inputs = tuple(torch.randn(s, device=args.device) for s in shapes)
    return model, inputs
