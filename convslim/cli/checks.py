"""Every value on the command line checked before any file is read: what a flag names must exist (a device, a
form, a runtime's int8 options), and every number must lie in its domain. Layers (``--exclude``) and ONNX nodes
(``--int8-exclude``) are checked as soon as the model is traced or exported, still before any work.

Example:
    >>> check_values(build_parser().parse_args(["plan", "m.pt", "--input-shape", "1,3,32,32", "--out", "p.json"]))
"""

from __future__ import annotations

import argparse

from convslim.cli.args import budget_options, form_options, plan_threads, recipe_settings, runtime_name
from convslim.errors import UsageError


def check_values(args: argparse.Namespace) -> None:
    """The checks that apply to ``args``' subcommand (each looks only at the flags it has)."""
    from convslim.inputs.loading import check_device, parse_input_shapes

    if hasattr(args, "device"):
        check_device(args.device)
    shapes = parse_input_shapes(args.input_shape)
    _check_forms(args)
    _check_numbers(args)
    _check_runtime(args, shapes[0])


def _check_forms(args: argparse.Namespace) -> None:
    from convslim.convert import get_form
    from convslim.options import wants_budgeted
    from convslim.planner import check_budget, parse_forms

    if not hasattr(args, "to") or getattr(args, "plan", None):
        return
    if args.command == "inspect":
        for name in (f.strip() for f in args.to.split(",") if f.strip()):
            get_form(name)
    elif wants_budgeted(args.to, budget_options(args)):
        parse_forms(args.to)
        check_budget(**budget_options(args))
    else:
        get_form(args.to).check_options(form_options(args))


def _check_numbers(args: argparse.Namespace) -> None:
    from convslim.finetune import FinetuneSettings
    from convslim.inputs.sets import HeldOut

    tolerance = getattr(args, "tolerance", 0.0)
    if not 0 <= tolerance < float("inf"):
        raise UsageError(
            f"--tolerance {tolerance}: must be a finite number ≥ 0 (a share of the output scale)"
        )
    if getattr(args, "plan_batch", None) is not None and args.plan_batch < 1:
        raise UsageError(f"--plan-batch {args.plan_batch}: must be a positive batch size")
    plan_threads(args)
    if hasattr(args, "finetune_steps"):
        steps = {"steps": args.finetune_steps, "minutes": args.finetune_minutes}
        FinetuneSettings(**recipe_settings(args), **steps).check()
    if getattr(args, "val_split", None) is not None:
        HeldOut(args.val_split)


def _check_runtime(args: argparse.Namespace, input_shape: tuple[int, ...]) -> None:
    from convslim.runtime.export import check_opset

    if not hasattr(args, "runtime"):
        return
    runtime = runtime_name(args)
    if getattr(args, "int8_exclude", None) and runtime != "cpu-int8":
        raise UsageError(f"--int8-exclude keeps nodes in fp32 under --runtime cpu-int8 only, not {runtime}")
    if any(not entry.strip() for entry in getattr(args, "int8_exclude", None) or ()):
        raise UsageError(
            "--int8-exclude takes a node name, an op type (Conv, Gemm) or a kind ('depthwise conv')"
        )
    check_opset(getattr(args, "opset", None))
    batch = getattr(args, "plan_batch", None)
    if getattr(args, "static_shape", False) and batch is not None and batch != input_shape[0]:
        raise UsageError(
            f"--plan-batch {batch}: with --static-shape the model runs only at batch {input_shape[0]} "
            "(--input-shape), so it is planned there; drop --plan-batch or change --input-shape"
        )
