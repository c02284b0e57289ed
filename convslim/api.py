"""The Python API: prepare → plan → apply → (fine-tune) → export and verify.

Example:
    >>> from convslim import compress
    >>> result = compress(model, (torch.randn(1, 3, 32, 32),), to="dwsep", rank=1, out_dir="out")
    >>> print(result.report.summary())

``plan`` and ``apply`` expose the middle so a plan can be inspected (or edited, or saved) before it is applied.
Neither the model nor the plan passed in is ever modified: every step works on copies, and ``rewrite`` returns
the plan as built (what graph-level work fixed, e.g. octave's channel sets) as a new plan.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from convslim.convert import get_form
from convslim.core import Plan, Prepared
from convslim.core.outputs import check_output_dir
from convslim.errors import UsageError
from convslim.options import CompressOptions, wants_budgeted
from convslim.passes.apply_plan import Rewritten
from convslim.passes.apply_plan import rewrite as rewrite_plan
from convslim.passes.prepare import prepare
from convslim.planner.fit import fit_plan
from convslim.planner.uniform import check_exclude, make_plan
from convslim.report.report import Report
from convslim.report.runinfo import run_record
from convslim.report.sections import FinetuneSection, PlanSection, RewriteSection, RunSection
from convslim.runtime.deploy import DeploySettings, check_exclusions_early
from convslim.runtime.export import ExportSettings


@dataclass
class CompressionResult:
    """The compressed model, its report, the plan as built (the one saved as ``plan.json``) and the prepared
    original it was built from."""

    model: nn.Module
    report: Report
    plan: Plan
    prepared: Prepared


def plan(
    model: nn.Module | Prepared,
    example_inputs=None,
    to: str = "dwsep",
    exclude: Sequence[str] = (),
    **options,
) -> Plan:
    """Decide per conv (form, setting, or why skipped) without rewriting anything."""
    prepared = model if isinstance(model, Prepared) else prepare(model, example_inputs)
    return _uniform_plan(prepared, to, exclude, options)


def plan_budgeted(
    model: nn.Module | Prepared,
    example_inputs=None,
    to: str = "auto",
    *,
    calibration: torch.Tensor | None = None,
    exclude: Sequence[str] = (),
    **budget,
) -> Plan:
    """Per-layer forms and settings chosen on measured ORT latency and output damage to meet one budget
    (``target_speedup``, ``target_macs`` or ``max_error``); see ``convslim.planner``."""
    from convslim.planner import plan_to_budget

    prepared = model if isinstance(model, Prepared) else prepare(model, example_inputs)
    return plan_to_budget(prepared, to, calibration=calibration, exclude=exclude, **budget)


def _plan_on_rank0(prepared: Prepared, **options) -> Plan:
    """The budgeted plan, measured once (on rank 0 under torchrun: timings differ per process) and shared."""
    from convslim import parallel

    text = plan_budgeted(prepared, **options).to_json() if parallel.is_main() else None
    return Plan.from_json(parallel.broadcast_object(text), "the plan rank 0 made")


def _uniform_plan(prepared: Prepared, to: str, exclude: Sequence[str], options: dict) -> Plan:
    get_form(to)
    check_exclude(exclude, prepared)
    return make_plan(prepared.sites, to, options, prepared.traced.unconvertible, tuple(exclude))


def apply(
    model: nn.Module | Prepared, plan: Plan, example_inputs=None, notes: list[str] | None = None
) -> nn.Module:
    """Return the compressed copy of ``model`` that ``plan`` describes (``plan`` is left unchanged)."""
    return rewrite(model, plan, example_inputs, notes).model


def rewrite(
    model: nn.Module | Prepared, plan: Plan, example_inputs=None, notes: list[str] | None = None
) -> Rewritten:
    """Like ``apply``, and also the plan as built: a new plan with what graph-level work fixed (e.g. octave's
    channel sets), the one to save or report. ``plan`` itself is left unchanged."""
    prepared = model if isinstance(model, Prepared) else prepare(model, example_inputs)
    return rewrite_plan(prepared.traced.module, fit_plan(plan, prepared), notes=notes)


def compress(
    model: nn.Module, example_inputs, to: str = "dwsep", *, plan: Plan | str | Path | None = None, **options
):
    """Rewrite ``model``'s convs into form ``to``; with ``verify`` export to ONNX and check it with ORT.

    ``options`` (gathered into ``convslim.options.CompressOptions``) go to the form (``rank``, ``energy``, ...),
    except these. The option groups, as objects or their fields as plain keywords: ``budget``
    (``target_speedup``, ``target_macs``, ``max_error``, ``plan_batch``, ``plan_threads``), ``checks`` (``verify``,
    ``measure_speed``, ``batch_sizes``, ``tolerance``), ``output`` (``out_dir``, ``overwrite``, ``files``: more
    files to write there, name → ``write(path)``). ``calibration`` is a batch of real inputs used in the parity
    checks (and the planner's damage probes). ``finetune(prepared, compressed, plan) -> (model, report_dict)`` is
    called between rewriting and export when given. ``exclude`` keeps layers (and all under them); ``progress``
    shows progress bars. With ``out_dir``, ``model.onnx``, ``compressed.pt2``, ``plan.json``,
    ``compressed_state_dict.pt``, ``report.json`` and ``report.md`` appear there together or not at all.
    With ``to="auto"`` (or ``"a,b"``) and one of ``target_speedup``/``target_macs``/``max_error`` the budgeted
    planner picks per layer (measured at ``plan_batch``); the report then shows predicted vs measured speedup.
    ``deploy`` (``runtime.deploy.DeploySettings``) names the runtime target (``cpu-int8`` quantizes both models
    with its calibration images and plans in int8), the export's opset and static shape, and the images accuracy
    is checked on; the report then compares original and compressed in fp32 and int8.
    Under torchrun every rank calls it (the fine-tune is shared); only rank 0 plans on timings, exports,
    verifies and writes. ``record`` adds facts to the report's ``run`` section (the CLI puts its command line there).

    ``plan`` (a ``Plan`` or a plan file's path) is untrusted: it must list exactly this model's convs, each
    setting passes its form's option checks, and every cost is recomputed from the model (``planner.fit``).

    Checked before any work: ``out_dir`` (writable; empty unless ``overwrite``), the weights (finite), the runtime
    target, the plan, and that the model can be exported at all; a plan that rewrites nothing is refused
    (``UsageError``).
    """
    opts = CompressOptions.of(options)
    deploy = _checked_deploy(opts)
    given, source = (
        (plan, "the plan") if plan is None or isinstance(plan, Plan) else (Plan.read(plan), str(plan))
    )
    start = time.perf_counter()
    opts.check(to, planned=given is not None)
    prepared = prepare(model, example_inputs, opts.calibration)
    check_exclude(opts.exclude, prepared)
    plan = None if given is None else fit_plan(given, prepared, source)
    with tempfile.TemporaryDirectory(prefix="convslim-") as scratch:
        original = _export_original(
            prepared, Path(scratch), deploy, opts.checks.verify or _plans(to, opts, plan)
        )
        plan = plan if plan is not None else _plan_for(prepared, to, opts, (deploy, original))
        if not plan.rewritten:
            raise UsageError(nothing_rewritten(plan))
        notes = list(prepared.traced.notes)
        compressed, plan = rewrite(prepared, plan, notes=notes)  # from here on, the plan as built
        if original is not None:  # nothing is deployed without it
            check_exclusions_early(deploy, [original.path], (compressed, prepared.example_inputs))
        record = run_record(prepared.example_inputs, opts.record, _compress_settings(to, opts))
        stages = _Stages.start(prepared, plan, notes, record, start)
        stages = replace(stages, scratch=Path(scratch), original=original)
        return _tune_and_export(stages, compressed, opts.finetune, replace(opts, deploy=deploy))


def _plans(to: str, opts: CompressOptions, plan: Plan | None) -> bool:
    """Whether this run writes outputs or plans on a budget: either exports the original."""
    return opts.output.out_dir is not None or (plan is None and wants_budgeted(to, opts.budget.limits()))


def _export_original(prepared: Prepared, scratch: Path, deploy: DeploySettings, needed: bool):
    """The original exported once for the whole run (the planner times its bytes, the pipeline ships them); a
    model torch.export cannot take fails here, before rewriting. None when nothing will need it."""
    from convslim.verify.pipeline import export_original

    return export_original(prepared, scratch, deploy) if needed else None


def _compress_settings(to: str, opts: CompressOptions) -> dict:
    """The report's ``run.compress_options``: every setting of this compress in force."""
    checks = opts.checks
    settings = {"to": to, "tolerance": checks.tolerance, "batch_sizes": list(checks.batch_sizes)}
    settings.update(exclude=list(opts.exclude), measure_speed=checks.measure_speed, verify=checks.verify)
    settings.update(plan_batch=opts.budget.plan_batch, finetune=opts.finetune is not None)
    settings["plan_threads"] = opts.budget.plan_threads
    settings["calibration_samples"] = None if opts.calibration is None else len(opts.calibration)
    settings.update({k: v for k, v in opts.budget.limits().items() if v is not None})
    return settings


def _checked_deploy(opts: CompressOptions, inputs: Sequence[str | Path] = ()) -> DeploySettings:
    """The deployment asked for, its target checked now (unknown, unavailable or uncalibrated targets fail before
    any work, not after fine-tuning), and the output folder checked (it must not hold ``inputs``)."""
    deploy = opts.deploy or DeploySettings()
    deploy.target()
    if opts.output.out_dir is not None:
        check_output_dir(opts.output.out_dir, inputs=list(inputs), overwrite=opts.output.overwrite)
    return deploy


def _plan_for(prepared: Prepared, to: str, opts: CompressOptions, deployment: tuple) -> Plan:
    """The budgeted plan (``to="auto"``, several forms, or a budget given), else the uniform one.
    ``deployment``: the settings and the original as exported (its bytes are timed when exported alike)."""
    if not wants_budgeted(to, opts.budget.limits()):
        return _uniform_plan(prepared, to, opts.exclude, opts.form_options)
    deploy, original = deployment
    alike = original is not None and deploy.export == ExportSettings(opset=deploy.export.opset)
    # a static-shape model runs at the batch of its example inputs only: it is planned (and shipped) there
    static = deploy.export.static_shape
    return _plan_on_rank0(
        prepared,
        to=to,
        calibration=opts.calibration,
        exclude=opts.exclude,
        batch=len(prepared.example_inputs[0]) if static else opts.budget.plan_batch,
        threads=opts.budget.plan_threads,
        progress=opts.progress,
        target=deploy.target(),
        opset=deploy.export.opset,
        original_onnx=original.path.read_bytes() if alike else None,
        **opts.budget.limits(),
    )


@dataclass(frozen=True)
class _Stages:
    """The report sections known before fine-tuning: the plan, the rewrite, the run."""

    prepared: Prepared
    plan: Plan
    sections: dict
    scratch: Path | None = None  # the run's scratch folder, when it has one already
    original: object = None  # the original exported there (``runtime.export.Exported``)

    @classmethod
    def start(cls, prepared: Prepared, plan: Plan, notes: list[str], record: dict, start: float) -> _Stages:
        from convslim.verify.pipeline import weight_errors

        rewrite_section = RewriteSection.of(
            plan,
            prepared.traced.mode,
            weight_errors(prepared, plan),
            batchnorm_folded=prepared.batchnorm_folded,
            notes=tuple(notes),
            seconds=time.perf_counter() - start,
        )
        return cls(
            prepared,
            plan,
            {"plan": PlanSection.of(plan), "rewrite": rewrite_section, "run": RunSection(record)},
        )


def _tune_and_export(
    stages: _Stages, compressed: nn.Module, finetune, opts: CompressOptions
) -> CompressionResult:
    """Fine-tune (``finetune`` hook, when given), then export, verify and write (only rank 0 under torchrun); the
    report assembled from every stage's section. ``compress`` and ``finetune_output`` both end here."""
    from convslim import parallel

    prepared, plan, sections = stages.prepared, stages.plan, dict(stages.sections)
    if finetune is not None:
        t0 = time.perf_counter()
        compressed, payload = finetune(prepared, compressed, plan)
        sections["finetune"] = FinetuneSection(payload, time.perf_counter() - t0)
    if not ((opts.checks.verify or opts.output.out_dir is not None) and parallel.is_main()):
        return CompressionResult(compressed, Report(**sections), plan, prepared)
    report = _export_verify_write(replace(stages, sections=sections), compressed, opts)
    return CompressionResult(compressed, report, plan, prepared)


def _export_verify_write(stages: _Stages, compressed: nn.Module, opts: CompressOptions) -> Report:
    from convslim.verify.pipeline import VerifySettings, export_and_verify, output_names, write_outputs

    checks, sections = opts.checks, dict(stages.sections)
    batch_sizes = checks.batch_sizes if checks.measure_speed else ()
    settings = VerifySettings(batch_sizes, checks.tolerance, opts.calibration, opts.progress, opts.deploy)
    settings = replace(settings, original=stages.original)
    verified = export_and_verify(stages.prepared, compressed, stages.scratch, settings)
    sections.update(export=verified.export, verify=verified.verify, deploy=verified.deploy)
    if opts.output.out_dir is None:
        return Report(**sections)
    out_dir = Path(opts.output.out_dir)
    names = output_names(verified, opts.output.files)
    report = Report(**sections, outputs={name: str(out_dir / name) for name in names})
    write_outputs(report, verified, compressed, stages.plan, opts.output)
    return report


FINETUNE_OUTPUT_OPTIONS = (
    "checks",
    "output",
    "verify",
    "measure_speed",
    "batch_sizes",
    "tolerance",
    "out_dir",
)
FINETUNE_OUTPUT_OPTIONS += ("overwrite", "files", "calibration", "progress", "deploy")


def finetune_output(source: str | Path, model: nn.Module, example_inputs, finetune: Callable, **options):
    """Fine-tune the output folder of an earlier ``compress`` (``plan.json`` + ``compressed_state_dict.pt``, no
    pickled code) and export and verify it like ``compress``, into ``out_dir``.

    ``model`` is a fresh instance of the original architecture with its trained weights (the teacher); the
    hook comes from ``convslim.finetune.finetune(data, val_data, ...)``. ``options`` are ``compress``'s checks
    (``verify``, ``measure_speed``, ``batch_sizes``, ``tolerance``), output (``out_dir``, ``overwrite``,
    ``files``), ``calibration``, ``progress`` and ``deploy``. With the same plan and seed this gives what
    ``compress(..., finetune=hook)`` gives in one call. Under torchrun every rank calls it; rank 0 writes.

    Example:
        >>> hook = finetune(train, val, minutes=8)
        >>> result = finetune_output("out", model, torch.randn(1, 3, 32, 32), hook, out_dir="out-ft")
    """
    opts = CompressOptions.of(options, allowed=FINETUNE_OUTPUT_OPTIONS, caller="finetune_output")
    deploy = _checked_deploy(opts, inputs=[source])
    start = time.perf_counter()
    prepared = prepare(model, example_inputs, opts.calibration)
    saved_plan, compressed = _load_output(prepared, source)
    check_exclusions_early(deploy, [Path(source) / n for n in ("original.onnx", "model.onnx")])
    notes = list(prepared.traced.notes) + [f"fine-tuned from the compress output {source}"]
    if _was_finetuned(source) and hasattr(finetune, "resuming"):
        finetune = finetune.resuming()
        notes.append(f"{source} was fine-tuned already: stage 1 (layer-wise refit) skipped, its weights kept")
    checks = opts.checks
    run = {
        "finetuned_from": str(source),
        "tolerance": checks.tolerance,
        "batch_sizes": list(checks.batch_sizes),
    }
    run.update(measure_speed=checks.measure_speed, verify=checks.verify, finetune=True)
    stages = _Stages.start(prepared, saved_plan, notes, run_record(prepared.example_inputs, None, run), start)
    with tempfile.TemporaryDirectory(prefix="convslim-") as scratch:
        stages = replace(stages, scratch=Path(scratch))
        return _tune_and_export(stages, compressed, finetune, replace(opts, deploy=deploy))


def nothing_rewritten(plan: Plan) -> str:
    """One line: every conv was skipped, the commonest reason, and what to try."""
    reasons = [d.skipped_reason or "kept" for d in plan.layers]
    if not reasons:
        return "nothing to rewrite: the model has no Conv2d layer"
    verdict = (plan.planning or {}).get("verdict")
    if verdict:  # the budgeted planner measured and kept the model: say what it found
        return f"nothing was rewritten: {verdict} (plan.json's layer_timings show each layer); nothing was written"
    first = plan.layers[0]
    return (
        f"nothing was rewritten: all {len(reasons)} convs were skipped (e.g. {first.name}: {first.skipped_reason}); "
        "choose another form or setting (`convslim inspect` shows what each would do); nothing was written"
    )


def export_blocker(prepared: Prepared) -> str | None:
    """Why torch.export cannot take this model (so compress would fail at export), or None. Only a model that
    symbolic tracing could not take is tried: an FX-traced one has no Python control flow left to block export."""
    from convslim.runtime.export import ExportError, export_program

    if prepared.traced.mode == "fx":
        return None
    try:
        export_program(prepared.traced.module, prepared.example_inputs)
    except ExportError as exc:
        return str(exc)
    return None


def load_compressed(model: nn.Module, example_inputs, out_dir: str | Path) -> nn.Module:
    """Rebuild a compressed model from ``plan.json`` + ``compressed_state_dict.pt`` (no pickled code runs).

    ``model`` is a fresh instance of the original architecture (its weights are replaced by the saved ones).
    """
    return _load_output(prepare(model, example_inputs), out_dir)[1]


def _was_finetuned(out_dir: str | Path) -> bool:
    """Whether the report in ``out_dir`` records a fine-tune (no report.json: not known, so no)."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_bytes().decode("utf-8")).get("finetune"))
    except ValueError as exc:  # not UTF-8, or not JSON
        raise UsageError(
            f"{path}: not valid JSON ({exc}); give a folder written by convslim compress"
        ) from None


def _load_output(prepared: Prepared, out_dir: str | Path) -> tuple[Plan, nn.Module]:
    """The plan and compressed model saved in ``out_dir`` (weights loaded without unpickling code); the plan is
    checked against the model (``planner.fit``) and the weights against the model it builds."""
    from convslim.inputs.loading import load_tensors

    out_dir = Path(out_dir)
    for name in ("plan.json", "compressed_state_dict.pt"):
        if not (out_dir / name).is_file():
            raise UsageError(f"{out_dir}: no {name}; give a folder written by convslim compress")
    saved_plan = fit_plan(Plan.read(out_dir / "plan.json"), prepared, str(out_dir / "plan.json"))
    compressed = apply(prepared, saved_plan)
    state = load_tensors(out_dir / "compressed_state_dict.pt")
    try:
        compressed.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(
            f"{out_dir}/compressed_state_dict.pt does not fit the model its plan builds "
            f"({str(exc).splitlines()[0]}); give the architecture and weights that folder was compressed from"
        ) from None
    return saved_plan, compressed.eval()
