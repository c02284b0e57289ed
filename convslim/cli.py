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
    g.add_argument("--alpha", type=float, help="octave: fraction of channels at half resolution")
    g.add_argument("--exclude", action="append", default=[], help="layer name (or prefix) to leave alone")


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
    keys = ("rank", "energy", "groups", "mix", "alpha")
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
    from convslim.outputs import check_output_dir
    from convslim.plan import Plan

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
        **form_options(args),
    )
    print(result.report.summary())
    print(f"  outputs: {args.out}/ (model.onnx, compressed.pt2, plan.json, report.json, report.md)")
    if not result.report.passed:
        print(
            "convslim: verification FAILED: ONNX output differs from PyTorch beyond --tolerance",
            file=sys.stderr,
        )
        return EXIT_VERIFY_FAILED
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
