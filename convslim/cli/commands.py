"""Command line: ``convslim compress``, ``finetune``, ``plan``, ``inspect`` and ``sweep``. Thin: parse, then one
call into the library. ``compress`` and ``finetune`` join the torchrun process group when torchrun launched them.

Each subcommand is one entry in ``COMMANDS`` (a function that adds its arguments, a function that runs it), so a
new subcommand is one new entry. The "form settings" group is built from the registered forms' ``Option``s, so
a new form needs no edit here.

Exit codes: 0 success, 1 verification failed (outputs and report still written), 2 bad usage or input (one
line, nothing written), 130 interrupted by Ctrl-C (143 by SIGTERM; a fine-tune stops and writes its best weights).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from convslim import parallel
from convslim.cli.args import (
    add_budget_args,
    add_check_args,
    add_exclude_arg,
    add_finetune_args,
    add_form_args,
    add_model_args,
    add_output_args,
    add_runtime_args,
    add_save_synthetic_arg,
    budget_options,
    data_sets,
    deploy_settings,
    files_to_save,
    finetune_inputs,
    form_options,
    load_model_and_inputs,
    no_ignored_form_options,
    parse_batch_sizes,
    plan_batch,
    plan_threads,
    registry_options,
    runtime_name,
)
from convslim.cli.checks import check_values
from convslim.core.signals import exit_code, signal_name, terminate_as_interrupt
from convslim.errors import ConvslimError, UsageError

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 128 + signal.SIGINT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors also exit 2, in one line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"convslim: error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one the help does not already state); keeps the examples'
    line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default {default})"


# --- compress -----------------------------------------------------------------------------------------------
COMPRESS_EXAMPLE = """example:
  convslim compress resnet20.th --arch convslim.models:resnet20 --input-shape 1,3,32,32 \\
      --to dwsep --rank 1 --data train.npz --out out/"""


def _compress_args(c: argparse.ArgumentParser) -> None:
    add_model_args(c)
    add_form_args(c)
    c.add_argument("--plan", help="apply this plan.json instead of planning")
    add_output_args(c)
    add_check_args(c)
    add_finetune_args(c)
    add_save_synthetic_arg(c)
    add_budget_args(c)
    add_runtime_args(c)


def _compress(args: argparse.Namespace) -> int:
    from convslim.api import compress
    from convslim.core import Plan
    from convslim.core.outputs import CLI_WORDS, check_output_dir

    inputs = [args.model] + ([args.plan] if args.plan else [])
    removed = check_output_dir(args.out, inputs=inputs, overwrite=args.overwrite, words=CLI_WORDS)
    if removed:
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        print(
            f"convslim: --overwrite: {args.out} will be replaced when the new outputs are ready; this removes "
            f"{len(removed)} existing entr{'y' if len(removed) == 1 else 'ies'}: {shown}",
            file=sys.stderr,
        )
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    no_ignored_form_options(args)
    if args.plan:
        if not Path(args.plan).is_file():
            raise UsageError(f"--plan {args.plan}: no such file")
        Plan.read(args.plan)  # its structure now, before any work; compress checks it against the model
    model, inputs = load_model_and_inputs(args)
    sets = data_sets(args, model, inputs)
    hook, calibration = finetune_inputs(args, model, inputs, sets)
    deploy = deploy_settings(args, sets)
    result = compress(
        model,
        inputs,
        to=args.to,
        plan=args.plan,
        out_dir=args.out,
        overwrite=args.overwrite,
        files=files_to_save(args, sets),
        measure_speed=not args.no_speed,
        batch_sizes=batch_sizes,
        tolerance=args.tolerance,
        exclude=args.exclude,
        progress=not args.quiet,
        calibration=calibration,
        finetune=hook,
        plan_batch=plan_batch(args),
        plan_threads=plan_threads(args),
        deploy=deploy,
        record=_run_record(args),
        **budget_options(args),
        **form_options(args),
    )
    return _finish(result, args)


def _finish(result, args: argparse.Namespace) -> int:
    if not parallel.is_main():  # under torchrun rank 0 speaks (and writes) for all ranks
        return EXIT_OK
    print(result.report.summary())
    print(f"  outputs: {args.out}/ ({', '.join(Path(p).name for p in result.report.outputs.values())})")
    return _compress_exit(result.report)


# --- finetune -------------------------------------------------------------------------------------------------
FINETUNE_EXAMPLE = """example:
  convslim finetune out/ resnet20.th --arch convslim.models:resnet20 --input-shape 1,3,32,32 \\
      --data train.npz --finetune-minutes 8 --out out-finetuned/
  torchrun --nproc_per_node 2 -m convslim finetune out/ resnet20.th ... --out out-finetuned/"""


def _finetune_args(f: argparse.ArgumentParser) -> None:
    f.add_argument(
        "source", metavar="OUT_DIR", help="folder written by convslim compress (plan.json + weights)"
    )
    add_model_args(f)
    add_output_args(f)
    add_check_args(f)
    add_finetune_args(f)
    add_save_synthetic_arg(f)
    add_runtime_args(f)


def _finetune(args: argparse.Namespace) -> int:
    from convslim.api import finetune_output
    from convslim.core.outputs import CLI_WORDS, check_output_dir

    if not args.data:
        raise UsageError("finetune needs --data (the training data)")
    if not Path(args.source).is_dir():
        raise UsageError(f"{args.source}: no such folder; give the --out folder of convslim compress")
    check_output_dir(args.out, inputs=[args.model, args.source], overwrite=args.overwrite, words=CLI_WORDS)
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    model, inputs = load_model_and_inputs(args)
    sets = data_sets(args, model, inputs)
    hook, calibration = finetune_inputs(args, model, inputs, sets)
    result = finetune_output(
        args.source,
        model,
        inputs,
        hook,
        out_dir=args.out,
        overwrite=args.overwrite,
        files=files_to_save(args, sets),
        measure_speed=not args.no_speed,
        batch_sizes=batch_sizes,
        tolerance=args.tolerance,
        calibration=calibration,
        progress=not args.quiet,
        deploy=deploy_settings(args, sets),
    )
    return _finish(result, args)


def _run_record(args: argparse.Namespace) -> dict:
    """What the report records about this invocation: the command line and every CLI option in force."""
    return {
        "command": "convslim " + " ".join(sys.argv[1:]) if sys.argv[1:] else "convslim (called in-process)",
        "model": args.model,
        "arch": args.arch,
        "input_shape": args.input_shape,
        # form options in force (defaults included) are the report's ``options``; here the rest of the CLI's
        "cli_options": {
            k: v
            for k, v in sorted(vars(args).items())
            if k not in ("model", "command") and k not in registry_options()
        },
    }


def _compress_exit(report) -> int:
    finetune = report.finetune or {}
    if finetune.get("interrupted"):
        stopped = finetune.get("stopped_by") or "SIGINT"
        print(
            f"convslim: fine-tuning was interrupted ({stopped}) at {finetune.get('progress')}; the outputs hold "
            "the best weights so far",
            file=sys.stderr,
        )
        return 128 + getattr(signal, stopped, signal.SIGINT)
    if not report.passed:
        print(f"convslim: verification FAILED: {report.verify.failure}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    return EXIT_OK


# --- plan -----------------------------------------------------------------------------------------------------
PLAN_EXAMPLE = """example:
  convslim plan resnet20.th --arch convslim.models:resnet20 --input-shape 1,3,32,32 \\
      --to auto --target-speedup 2.5 --out plan.json"""


def _plan_args(pl: argparse.ArgumentParser) -> None:
    add_model_args(pl)
    add_form_args(pl)
    add_budget_args(pl)
    add_runtime_args(pl, deploy=False)
    pl.add_argument("--out", required=True, help="plan file to write (e.g. plan.json)")
    pl.add_argument("--overwrite", action="store_true", help="replace the plan file if it exists")
    pl.add_argument("--quiet", action="store_true", help="no progress bars")


def _plan(args: argparse.Namespace) -> int:
    from convslim.api import plan, plan_budgeted, prepare, wants_budgeted
    from convslim.core import cache_summary
    from convslim.core.outputs import CLI_WORDS, atomic_write_text, check_output_file

    out = Path(args.out)
    check_output_file(out, args.overwrite, CLI_WORDS)
    no_ignored_form_options(args)
    model, inputs = load_model_and_inputs(args)
    prepared = prepare(model, inputs)
    budget = budget_options(args)
    if wants_budgeted(args.to, budget):
        result = plan_budgeted(
            prepared,
            to=args.to,
            exclude=args.exclude,
            batch=plan_batch(args),
            threads=plan_threads(args),
            progress=not args.quiet,
            target=runtime_name(args),
            **budget,
        )
    else:
        result = plan(prepared, to=args.to, exclude=args.exclude, **form_options(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, result.to_json())
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
            f"({cache_summary(p)})"
        )
    if not result.rewritten:
        print("convslim: WARNING: nothing would be rewritten; see the reasons above", file=sys.stderr)
    return EXIT_OK


# --- inspect --------------------------------------------------------------------------------------------------
INSPECT_EXAMPLE = """example:
  convslim inspect resnet20.th --arch convslim.models:resnet20 --input-shape 1,3,32,32 --to dwsep,spatial"""


def _inspect_args(i: argparse.ArgumentParser) -> None:
    add_model_args(i)
    add_form_args(i)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _inspect(args: argparse.Namespace) -> int:
    from convslim.api import export_blocker, prepare
    from convslim.cli.inspect import inspect_rows, inspect_table

    model, inputs = load_model_and_inputs(args)
    prepared = prepare(model, inputs)
    forms = [f.strip() for f in args.to.split(",") if f.strip()]
    rows = inspect_rows(prepared, forms, form_options(args))
    print(json.dumps(rows, indent=2) if args.json else inspect_table(rows, forms))
    blocker = export_blocker(prepared)
    if blocker:
        print(f"convslim: WARNING: compress will fail at export: {blocker}", file=sys.stderr)
    return EXIT_OK


# --- sweep ----------------------------------------------------------------------------------------------------
SWEEP_EXAMPLE = """example:
  convslim sweep resnet20.th --arch convslim.models:resnet20 --input-shape 1,3,32,32 \\
      --targets 1.5,2,2.5,3 --data train.npz --val-data val.npz --finetune-minutes 5 --out sweep/"""


def _sweep_args(s: argparse.ArgumentParser) -> None:
    add_model_args(s)
    s.add_argument(
        "--targets", required=True, help="target speedups, one compress --to auto each: 1.5,2,2.5,3"
    )
    add_exclude_arg(s)
    add_output_args(s)
    add_check_args(s)
    add_finetune_args(s)
    add_budget_args(s, limits=False)
    add_runtime_args(s)


def _sweep(args: argparse.Namespace) -> int:
    from convslim.core.outputs import CLI_WORDS, check_output_dir
    from convslim.tradeoff import SweepSettings, check_targets, sweep

    if not args.data:
        raise UsageError("sweep needs --data (the training data): each point is fine-tuned and scored")
    targets = check_targets(args.targets.split(","))
    check_output_dir(args.out, inputs=[args.model], overwrite=args.overwrite, words=CLI_WORDS)
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    model, inputs = load_model_and_inputs(args)
    sets = data_sets(args, model, inputs)
    hook, calibration = finetune_inputs(args, model, inputs, sets)
    options = {"finetune": hook, "calibration": calibration, "deploy": deploy_settings(args, sets)}
    options.update(exclude=args.exclude, progress=not args.quiet, record=_run_record(args))
    options["plan_threads"] = plan_threads(args)
    options.update(measure_speed=not args.no_speed, batch_sizes=batch_sizes, tolerance=args.tolerance)
    settings = SweepSettings(targets, args.out, args.overwrite, plan_batch(args), options, quiet=args.quiet)
    try:
        result = sweep(model, inputs, settings)
    except KeyboardInterrupt as exc:
        if not (Path(args.out) / "sweep.json").is_file():
            raise  # no point finished: nothing was written
        print(f"convslim: interrupted; the finished points are in {args.out}/sweep.json", file=sys.stderr)
        return exit_code(exc)
    return _sweep_exit(result, args.out)


def _sweep_exit(result, out: str) -> int:
    """0 when a point succeeded; else 128 + signal (a fine-tune stopped by one), 1 (only verification
    failures) or 2 (every point failed with a convslim error)."""
    print(f"convslim: {len(result.succeeded)} of {len(result.points)} sweep point(s) ok → {out}/sweep.md")
    if "sweep.png" not in result.files:
        print("convslim: pip install convslim[plot] for sweep.png", file=sys.stderr)
    if result.stopped_by:
        return 128 + getattr(signal, result.stopped_by, signal.SIGINT)
    if result.succeeded:
        return EXIT_OK
    print(f"convslim: error: no point of the sweep succeeded; see {out}/sweep.md", file=sys.stderr)
    return EXIT_VERIFY_FAILED if any(p.status == "verification failed" for p in result.points) else EXIT_USAGE


# --- the command table ----------------------------------------------------------------------------------------
COMMANDS = {
    "compress": (
        "rewrite, export to ONNX, verify with ONNX Runtime, report",
        _compress_args,
        _compress,
        COMPRESS_EXAMPLE,
    ),
    "finetune": (
        "fine-tune a compress output folder, then export, verify and report it into a new folder",
        _finetune_args,
        _finetune,
        FINETUNE_EXAMPLE,
    ),
    "plan": (
        "choose per layer (form, setting) and write plan.json without rewriting",
        _plan_args,
        _plan,
        PLAN_EXAMPLE,
    ),
    "inspect": (
        "per-layer shapes, params and MACs, and what each form would do",
        _inspect_args,
        _inspect,
        INSPECT_EXAMPLE,
    ),
    "sweep": (
        "compress --to auto once per target speedup; a table and a plot of accuracy vs measured speedup",
        _sweep_args,
        _sweep,
        SWEEP_EXAMPLE,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from convslim.version import __version__

    parser = _Parser(
        prog="convslim", description="Make trained CNNs cheaper to run.", formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"convslim {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (summary, add_args, _, example) in COMMANDS.items():
        p = sub.add_parser(
            name, help=summary, description=summary, epilog=example, formatter_class=_Formatter
        )
        add_args(p)
        # accepted after the subcommand too; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminate_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        check_values(args)
        if args.command in ("compress", "finetune"):  # under torchrun: join the other ranks
            args.device = parallel.init_from_env(args.device)
        return COMMANDS[args.command][2](args)
    except ConvslimError as exc:
        if args.debug:
            raise
        print(f"convslim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (``terminate_as_interrupt``): the same clean-up
        if args.debug:
            raise
        said = "interrupted" if signal_name(exc) == "SIGINT" else f"stopped by {signal_name(exc)}"
        print(f"convslim: {said}; nothing was written", file=sys.stderr)
        return exit_code(exc)
    finally:
        parallel.shutdown()


if __name__ == "__main__":
    sys.exit(main())
