"""Command line: ``convslim compress`` and ``convslim inspect``. Thin: parse, then one call into the library.

Exit codes: 0 success, 1 verification failed (outputs and report still written), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from convslim.errors import ConvslimError, UsageError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors also exit 2, in one line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"convslim: error: {message}\n")


def _add_model_args(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--device", default="cpu", help="torch device for rewriting and fine-tuning (default cpu)")


def _add_form_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("form settings")
    g.add_argument("--to", default="dwsep", help="form: dwsep, spatial, grouped, octave (default dwsep)")
    g.add_argument(
        "--rank", type=float, help="rank T (dwsep) or r (spatial; a fraction < 1 means of full rank)"
    )
    g.add_argument(
        "--energy", type=float, help="keep this fraction of each layer's weight energy (sets the rank)"
    )
    g.add_argument("--groups", type=int, help="groups g (grouped)")
    g.add_argument("--mix", action="store_true", help="grouped: add a pointwise 1x1 that mixes the groups")
    g.add_argument("--width", type=float, help="grouped --mix: width R (a fraction < 1 means of full width)")
    g.add_argument(
        "--permute",
        choices=("consistent", "gather"),
        help="grouped: where channels are coupled (residual add, concat) keep the identity order "
        "(consistent, default) or an explicit channel gather",
    )
    g.add_argument(
        "--rank-multiple", type=int, help="spatial: round the rank up to a multiple (e.g. 8 or 16)"
    )
    g.add_argument("--alpha", type=float, help="octave: fraction of channels at half resolution")
    g.add_argument("--exclude", action="append", default=[], help="layer name (or prefix) to leave alone")


# --- data and fine-tuning (issue 5) ---------------------------------------------------------------------------
def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and fine-tuning (fine-tunes when --data is given)")
    g.add_argument("--data", help="training data: image folder (class sub-folders), .npz (x, y) or .pt")
    g.add_argument("--val-data", help="validation data (same kinds): top-1, or agreement with the original")
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
    g.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    g.add_argument(
        "--lr", type=float, default=1e-3, help="peak learning rate, cosine schedule (default 1e-3)"
    )
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"), help="default adamw")
    g.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    g.add_argument("--temperature", type=float, default=4.0, help="distillation temperature T (default 4)")
    g.add_argument("--ce-weight", type=float, default=1.0, help="weight of cross-entropy when labels exist")
    g.add_argument("--feature-weight", type=float, default=0.0, help="end-to-end feature matching weight")
    g.add_argument("--calibration-samples", type=int, default=1024, help="samples for stage 1 (default 1024)")
    g.add_argument("--no-augment", action="store_true", help="no random crop + flip on image batches")
    g.add_argument("--seed", type=int, default=0, help="seed for data order and augmentation (default 0)")


def _data_sets(args: argparse.Namespace, model, inputs) -> dict:
    """The data flags given (--data, --val-data, --calib-data), loaded and checked against the model."""
    from convslim.data import check_inputs, check_labels, load_data, parse_floats, parse_size

    calib = getattr(args, "calib_data", None)
    if args.val_data and not (args.data or calib):
        raise UsageError("--val-data needs --data (the training data) or --calib-data as well")
    flags = (("--data", args.data), ("--val-data", args.val_data), ("--calib-data", calib))
    if not any(path for _, path in flags):
        return {}
    resize, mean, std = (
        parse_size(args.resize),
        parse_floats(args.mean, "--mean"),
        parse_floats(args.std, "--std"),
    )
    sets = {flag: load_data(path, resize, mean, std) for flag, path in flags if path}
    with torch.no_grad():
        out = model.eval()(*inputs)
    classes = out.shape[1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    for flag, data in sets.items():
        check_inputs(data, inputs[0].shape, f"{flag} {data.source}")
        check_labels(data, classes, f"{flag} {data.source}")
        if data.skipped:
            print(f"convslim: {flag}: skipped {data.skipped} unreadable image(s)", file=sys.stderr)
    return sets


def _finetune_inputs(args: argparse.Namespace, sets: dict):
    """(hook, calibration batch) from the data flags, or (None, None) without --data."""
    from convslim.finetune import finetune

    if "--data" not in sets:
        return None, None
    hook = finetune(
        sets["--data"],
        sets.get("--val-data"),
        steps=args.finetune_steps,
        minutes=args.finetune_minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        temperature=args.temperature,
        ce_weight=args.ce_weight,
        feature_weight=args.feature_weight,
        calibration_samples=args.calibration_samples,
        augment=not args.no_augment,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    return hook, sets["--data"].x[:256].to(args.device)


# --- end data and fine-tuning ----------------------------------------------------------------------------------


def _add_runtime_args(p: argparse.ArgumentParser, deploy: bool = True) -> None:
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


def _deploy_settings(args: argparse.Namespace, sets: dict):
    """DeploySettings from the runtime flags; int8 calibrates on --calib-data, else --data (first 512 images),
    and checks accuracy on --val-data, else on images of the calibration source held back from calibration."""
    from convslim.runtime.deploy import DeploySettings
    from convslim.runtime.export import ExportSettings
    from convslim.runtime.int8 import Calibration, Int8Settings

    source = sets.get("--calib-data") or sets.get("--data")
    calibration = None
    if source is not None:
        calibration = Calibration.split(source, 512, sets.get("--val-data"))
        if source is sets.get("--data") and "--val-data" not in sets:
            calibration.held_source += "; fine-tuning trains on --data too"
    return DeploySettings(
        runtime=runtime_name(args),
        export=ExportSettings(opset=args.opset, static_shape=args.static_shape),
        int8=Int8Settings(exclude=tuple(args.int8_exclude)),
        calibration=calibration,
    )


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget (per-layer planning on measured ORT latency; use --to auto or --to a,b)")
    g.add_argument(
        "--target-speedup", type=float, help="predicted whole-model ORT speedup to reach, e.g. 2.5"
    )
    g.add_argument("--target-macs", type=float, help="fraction of the original conv MACs to keep, e.g. 0.4")
    g.add_argument("--max-error", type=float, help="largest predicted relative output error, e.g. 0.1")
    g.add_argument("--plan-batch", type=int, default=32, help="batch size layers are timed at (default 32)")


def budget_options(args: argparse.Namespace) -> dict:
    keys = ("target_speedup", "target_macs", "max_error")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="convslim", description="Make trained CNNs cheaper to run.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compress", help="rewrite, export to ONNX, verify with ONNX Runtime, report")
    _add_model_args(c)
    _add_form_args(c)
    c.add_argument("--plan", help="apply this plan.json instead of planning")
    c.add_argument(
        "--out", required=True, help="output folder (created; must not hold files unless --overwrite)"
    )
    c.add_argument("--overwrite", action="store_true", help="replace the output folder if it has files")
    c.add_argument("--tolerance", type=float, default=1e-4, help="ONNX parity: max abs err / output scale")
    c.add_argument("--batch-sizes", default="1,32", help="batch sizes to time (default 1,32)")
    c.add_argument("--no-speed", action="store_true", help="skip latency measurement")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_finetune_args(c)
    _add_budget_args(c)
    _add_runtime_args(c)

    pl = sub.add_parser("plan", help="choose per layer (form, setting) and write plan.json without rewriting")
    _add_model_args(pl)
    _add_form_args(pl)
    _add_budget_args(pl)
    _add_runtime_args(pl, deploy=False)
    pl.add_argument("--out", required=True, help="plan file to write (e.g. plan.json)")
    pl.add_argument("--overwrite", action="store_true", help="replace the plan file if it exists")
    pl.add_argument("--quiet", action="store_true", help="no progress bars")

    i = sub.add_parser("inspect", help="per-layer shapes, params and MACs, and what each form would do")
    _add_model_args(i)
    _add_form_args(i)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compress":
            return _compress(args)
        if args.command == "plan":
            return _plan(args)
        return _inspect(args)
    except ConvslimError as exc:
        if args.debug:
            raise
        print(f"convslim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("convslim: interrupted; nothing was written", file=sys.stderr)
        return 130


def form_options(args: argparse.Namespace) -> dict:
    keys = ("rank", "energy", "groups", "mix", "alpha", "width", "permute", "rank_multiple")
    return {k: getattr(args, k) for k in keys if getattr(args, k) not in (None, False)}


def _load(args: argparse.Namespace):
    from convslim.loading import load_model, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    model = load_model(
        args.model, args.arch, args.arch_kwargs, tuple(args.import_path), args.trust_pickle, args.device
    )
    inputs = tuple(torch.randn(s, device=args.device) for s in shapes)
    return model, inputs


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: expected integers like 1,32") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes {text!r}: expected positive integers like 1,32")
    return sizes


def _compress(args: argparse.Namespace) -> int:
    from convslim.api import compress
    from convslim.core import Plan
    from convslim.outputs import check_output_dir

    check_output_dir(
        args.out, inputs=[args.model] + ([args.plan] if args.plan else []), overwrite=args.overwrite
    )
    batch_sizes = _batch_sizes(args.batch_sizes)
    plan = None
    if args.plan:
        if not Path(args.plan).is_file():
            raise UsageError(f"--plan {args.plan}: no such file")
        plan = Plan.from_json(Path(args.plan).read_text(), args.plan)
    model, inputs = _load(args)
    sets = _data_sets(args, model, inputs)
    hook, calibration = _finetune_inputs(args, sets)
    deploy = _deploy_settings(args, sets)
    result = compress(
        model,
        inputs,
        to=args.to,
        plan=plan,
        out_dir=args.out,
        overwrite=args.overwrite,
        measure_speed=not args.no_speed,
        batch_sizes=batch_sizes,
        tolerance=args.tolerance,
        exclude=args.exclude,
        progress=not args.quiet,
        calibration=calibration,
        finetune=hook,
        plan_batch=args.plan_batch,
        deploy=deploy,
        **budget_options(args),
        **form_options(args),
    )
    print(result.report.summary())
    print(f"  outputs: {args.out}/ ({', '.join(Path(p).name for p in result.report.outputs)})")
    if not result.report.passed:
        print(
            "convslim: verification FAILED: ONNX output differs from PyTorch beyond --tolerance",
            file=sys.stderr,
        )
        return EXIT_VERIFY_FAILED
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from convslim.api import plan, plan_budgeted, prepare, wants_budgeted

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out}: exists; pass --overwrite to replace it")
    model, inputs = _load(args)
    prepared = prepare(model, inputs)
    budget = budget_options(args)
    if wants_budgeted(args.to, budget):
        result = plan_budgeted(
            prepared,
            to=args.to,
            exclude=args.exclude,
            batch=args.plan_batch,
            progress=not args.quiet,
            target=runtime_name(args),
            **budget,
        )
    else:
        result = plan(prepared, to=args.to, exclude=args.exclude, **form_options(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.to_json())
    print(f"convslim: {len(result.rewritten)}/{len(result.layers)} convs planned ({result.form}) → {out}")
    for d in result.layers:
        m = d.measured or {}
        detail = (
            f"ratio {m['ratio']:.2f}, damage {m['damage']:.4f}" if "ratio" in m else (d.skipped_reason or "")
        )
        print(f"  {d.name}: {d.form or 'kept'} {d.setting if d.form else ''} {detail}")
    if result.planning:
        p = result.planning
        print(
            f"  predicted {p['predicted_speedup']:.2f}x at batch {p['batch']} "
            f"({'reached' if p['reached'] else 'budget NOT reachable'}), predicted output error "
            f"{p['predicted_error']:.3f}, MACs {p['predicted_macs_fraction']:.1%}; planning {p['planning_s']:.1f} s "
            f"(cache {p['cache_hits']} hits / {p['cache_misses']} misses)"
        )
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from convslim.api import prepare
    from convslim.inspect import inspect_rows, inspect_table

    model, inputs = _load(args)
    prepared = prepare(model, inputs)
    forms = [f.strip() for f in args.to.split(",") if f.strip()]
    rows = inspect_rows(prepared, forms, form_options(args))
    print(json.dumps(rows, indent=2) if args.json else inspect_table(rows, forms))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
