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

import copy
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convslim.convert import get_form
from convslim.core import ConvSite, Plan, Prepared, TracedModel
from convslim.errors import PlanError, UsageError
from convslim.inputs.loading import check_finite
from convslim.options import Budget, Checks, Output, gather
from convslim.passes import collect_conv_sites, fold_batchnorm, trace_model
from convslim.passes.apply_plan import Rewritten
from convslim.passes.apply_plan import rewrite as rewrite_plan
from convslim.passes.trace import propagate_shapes_, without_export_guards
from convslim.planner.uniform import make_plan
from convslim.report.report import Report
from convslim.report.runinfo import run_record
from convslim.runtime.deploy import DeploySettings
from convslim.verify.parity import DEFAULT_RTOL


@dataclass
class CompressionResult:
    """The compressed model, its report, the plan as built (the one saved as ``plan.json``) and the prepared
    original it was built from."""

    model: nn.Module
    report: Report
    plan: Plan
    prepared: Prepared


def as_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def prepare(model: nn.Module, example_inputs, calibration: torch.Tensor | None = None) -> Prepared:
    """Copy, trace, fold BatchNorm and find every conv with its shapes.

    With ``calibration`` (a batch of real inputs), each site also gets ``input_sample``: what the conv sees on
    the first 64 of them, for forms that choose from activations.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"expected an nn.Module, got {type(model).__name__}")
    example_inputs = as_inputs(example_inputs)
    check_finite(model)
    original = without_export_guards(copy.deepcopy(model).eval())
    traced = trace_model(original, example_inputs)
    folded = 0
    if traced.mode == "fx":
        gm, folded = fold_batchnorm(traced.graph_module)
        traced = TracedModel(gm, example_inputs, "fx", traced.notes, traced.unconvertible)
        propagate_shapes_(traced)
    sites = collect_conv_sites(traced)
    if calibration is not None:
        record_input_samples(traced.module, sites, calibration[:64])
    return Prepared(original, traced, sites, folded)


@torch.no_grad()
def record_input_samples(module: nn.Module, sites: list[ConvSite], batch: torch.Tensor) -> None:
    by_name = {s.name: s for s in sites}
    handles = []
    for name, sub in module.named_modules():
        if name in by_name:

            def hook(mod, args, out, site=by_name[name]):
                if site.input_sample is None:
                    site.input_sample = args[0].detach()

            handles.append(sub.register_forward_hook(hook))
    try:
        module(batch)
    finally:
        for handle in handles:
            handle.remove()


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


def wants_budgeted(to: str, budget: dict) -> bool:
    """``--to auto``, ``--to a,b`` or any budget flag → the budgeted planner; else the uniform per-form plan."""
    return any(v is not None for v in budget.values()) or to == "auto" or "," in to


def _plan_on_rank0(prepared: Prepared, **options) -> Plan:
    """The budgeted plan, measured once (on rank 0 under torchrun: timings differ per process) and shared."""
    from convslim import parallel

    text = plan_budgeted(prepared, **options).to_json() if parallel.is_main() else None
    return Plan.from_json(parallel.broadcast_object(text), "the plan rank 0 made")


def _uniform_plan(prepared: Prepared, to: str, exclude: Sequence[str], options: dict) -> Plan:
    get_form(to)
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
    check_plan_fits(plan, prepared.sites)
    return rewrite_plan(prepared.traced.module, plan, notes=notes)


def check_plan_fits(plan: Plan, sites: list[ConvSite]) -> None:
    by_name = {s.name: s for s in sites}
    for decision in plan.rewritten:
        site = by_name.get(decision.name)
        if site is None:
            raise PlanError(
                f"plan layer {decision.name!r} is not a conv of this model; make the plan on this model"
            )
        if list(site.in_shape) != decision.in_shape:
            raise PlanError(
                f"plan layer {decision.name}: planned for input {decision.in_shape}, the model gives "
                f"{list(site.in_shape)}; plan again with this --input-shape"
            )


def compress(
    model: nn.Module,
    example_inputs,
    to: str = "dwsep",
    *,
    plan: Plan | None = None,
    calibration: torch.Tensor | None = None,
    finetune: Callable | None = None,
    exclude: Sequence[str] = (),
    progress: bool = False,
    budget: Budget | None = None,
    checks: Checks | None = None,
    output: Output | None = None,
    deploy: DeploySettings | None = None,
    record: dict | None = None,
    **options,
) -> CompressionResult:
    """Rewrite ``model``'s convs into form ``to``; with ``verify`` export to ONNX and check it with ORT.

    ``options`` go to the form (``rank``, ``energy``, ...), except the fields of the option groups, which may
    also be given as plain keywords (``convslim.options``): ``budget`` (``target_speedup``, ``target_macs``,
    ``max_error``, ``plan_batch``), ``checks`` (``verify``, ``measure_speed``, ``batch_sizes``, ``tolerance``),
    ``output`` (``out_dir``, ``overwrite``). ``calibration`` is a batch of real inputs used in the parity
    checks. ``finetune(prepared, compressed, plan) -> (model, report_dict)`` is called between rewriting and
    export when given. With ``out_dir``, ``model.onnx``, ``compressed.pt2``, ``plan.json``,
    ``compressed_state_dict.pt``, ``report.json`` and ``report.md`` appear there together or not at all.
    With ``to="auto"`` (or ``"a,b"``) and one of ``target_speedup``/``target_macs``/``max_error`` the budgeted
    planner picks per layer (measured at ``plan_batch``); the report then shows predicted vs measured speedup.
    ``deploy`` (``runtime.deploy.DeploySettings``) names the runtime target (``cpu-int8`` quantizes both models
    with its calibration images and plans in int8), the export's opset and static shape, and the images accuracy
    is checked on; the report then compares original and compressed in fp32 and int8.
    Under torchrun every rank calls it (the fine-tune is shared); only rank 0 plans on timings, exports,
    verifies and writes. ``record`` adds facts to the report's ``run`` section (the CLI puts its command line there).

    Checked before any work: ``out_dir`` (writable; empty unless ``overwrite``), the weights (finite), the runtime
    target, and that the model can be exported at all; a plan that rewrites nothing is refused (``UsageError``).
    """
    from convslim.core.outputs import check_output_dir
    from convslim.runtime.export import export_program
    from convslim.verify.pipeline import VerifySettings, weight_errors

    deploy = deploy or DeploySettings()
    deploy.target()  # unknown, unavailable or uncalibrated targets fail now, not after fine-tuning

    budget, checks, output, options = gather(options, budget=budget, checks=checks, output=output)
    if output.out_dir is not None:
        check_output_dir(output.out_dir, overwrite=output.overwrite)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare(model, example_inputs, calibration)
    if (
        checks.verify or output.out_dir is not None
    ):  # a model torch.export cannot take fails here, before rewriting
        export_program(prepared.traced.module, prepared.example_inputs)
    if plan is None and wants_budgeted(to, budget.limits()):
        plan = _plan_on_rank0(
            prepared,
            to=to,
            calibration=calibration,
            exclude=exclude,
            batch=budget.plan_batch,
            progress=progress,
            target=deploy.target(),
            opset=deploy.export.opset,
            **budget.limits(),
        )
        timings["plan"] = plan.planning["planning_s"]
    elif plan is None:
        plan = _uniform_plan(prepared, to, exclude, options)
    if not plan.rewritten:
        raise UsageError(nothing_rewritten(plan))
    notes = list(prepared.traced.notes)
    compressed, plan = rewrite(prepared, plan, notes=notes)  # from here on, the plan as built
    report = Report.from_plan(plan, prepared.traced.mode, weight_errors(prepared, plan))
    report.batchnorm_folded = prepared.batchnorm_folded
    report.planning = plan.planning
    report.notes.extend(notes)
    settings = {"to": to, "tolerance": checks.tolerance, "batch_sizes": list(checks.batch_sizes)}
    settings.update(exclude=list(exclude), measure_speed=checks.measure_speed, verify=checks.verify)
    settings.update(plan_batch=budget.plan_batch, finetune=finetune is not None)
    settings["calibration_samples"] = None if calibration is None else len(calibration)
    limits = {k: v for k, v in budget.limits().items() if v is not None}
    report.run = run_record(prepared.example_inputs, record, {**settings, **limits})
    timings["rewrite"] = time.perf_counter() - start
    verify_settings = VerifySettings(
        output.out_dir,
        output.overwrite,
        checks.batch_sizes if checks.measure_speed else (),
        checks.tolerance,
        calibration,
        progress,
        deploy,
    )
    return _tune_and_export(prepared, plan, compressed, report, timings, finetune, checks, verify_settings)


def _tune_and_export(prepared, plan, compressed, report, timings, finetune, checks, settings):
    """Fine-tune (``finetune`` hook, when given), then export and verify: only rank 0 under torchrun."""
    from convslim import parallel
    from convslim.verify.pipeline import export_and_verify

    if finetune is not None:
        t0 = time.perf_counter()
        compressed, report.finetune = finetune(prepared, compressed, plan)
        timings["finetune"] = time.perf_counter() - t0
    report.timings_s = timings
    if (checks.verify or settings.out_dir is not None) and parallel.is_main():
        with tempfile.TemporaryDirectory(prefix="convslim-") as scratch:
            export_and_verify(prepared, compressed, plan, report, Path(scratch), settings)
    return CompressionResult(compressed, report, plan, prepared)


def finetune_output(
    source: str | Path,
    model: nn.Module,
    example_inputs,
    finetune: Callable,
    *,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    verify: bool = True,
    measure_speed: bool = True,
    batch_sizes: Sequence[int] = (1, 32),
    tolerance: float = DEFAULT_RTOL,
    calibration: torch.Tensor | None = None,
    progress: bool = False,
    deploy: DeploySettings | None = None,
) -> CompressionResult:
    """Fine-tune the output folder of an earlier ``compress`` (``plan.json`` + ``compressed_state_dict.pt``, no
    pickled code) and export and verify it like ``compress``, into ``out_dir``.

    ``model`` is a fresh instance of the original architecture with its trained weights (the teacher); the
    hook comes from ``convslim.finetune.finetune(data, val_data, ...)``. With the same plan and seed this gives
    what ``compress(..., finetune=hook)`` gives in one call. Under torchrun every rank calls it; rank 0 writes.

    Example:
        >>> hook = finetune(train, val, minutes=8)
        >>> result = finetune_output("out", model, torch.randn(1, 3, 32, 32), hook, out_dir="out-ft")
    """
    from convslim.core.outputs import check_output_dir
    from convslim.verify.pipeline import VerifySettings, weight_errors

    deploy = deploy or DeploySettings()
    deploy.target()  # fail now, not after fine-tuning
    if out_dir is not None:
        check_output_dir(out_dir, inputs=[source], overwrite=overwrite)
    start = time.perf_counter()
    prepared = prepare(model, example_inputs, calibration)
    saved_plan, compressed = _load_output(prepared, source)
    resumed = _was_finetuned(source) and hasattr(finetune, "resuming")
    if resumed:
        finetune = finetune.resuming()
    report = Report.from_plan(saved_plan, prepared.traced.mode, weight_errors(prepared, saved_plan))
    report.batchnorm_folded = prepared.batchnorm_folded
    report.planning = saved_plan.planning
    report.notes.extend(list(prepared.traced.notes) + [f"fine-tuned from the compress output {source}"])
    if resumed:
        report.notes.append(
            f"{source} was fine-tuned already: stage 1 (layer-wise refit) skipped, its weights kept"
        )
    run = {"finetuned_from": str(source), "tolerance": tolerance, "batch_sizes": list(batch_sizes)}
    run.update(measure_speed=measure_speed, verify=verify, finetune=True)
    report.run = run_record(prepared.example_inputs, None, run)
    timings = {"rewrite": time.perf_counter() - start}
    settings = VerifySettings(
        out_dir, overwrite, batch_sizes if measure_speed else (), tolerance, calibration, progress, deploy
    )
    checks = Checks(verify=verify)
    return _tune_and_export(prepared, saved_plan, compressed, report, timings, finetune, checks, settings)


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
        return bool(json.loads(path.read_text()).get("finetune"))
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: not valid JSON ({exc}); give a folder written by convslim compress"
        ) from None


def _load_output(prepared: Prepared, out_dir: str | Path) -> tuple[Plan, nn.Module]:
    """The plan and compressed model saved in ``out_dir`` (weights loaded without unpickling code)."""
    out_dir = Path(out_dir)
    for name in ("plan.json", "compressed_state_dict.pt"):
        if not (out_dir / name).is_file():
            raise UsageError(f"{out_dir}: no {name}; give a folder written by convslim compress")
    saved_plan = Plan.from_json((out_dir / "plan.json").read_text(), str(out_dir / "plan.json"))
    compressed = apply(prepared, saved_plan)
    state = torch.load(out_dir / "compressed_state_dict.pt", map_location="cpu", weights_only=True)
    try:
        compressed.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(
            f"{out_dir}/compressed_state_dict.pt does not fit the model its plan builds "
            f"({str(exc).splitlines()[0]}); give the architecture and weights that folder was compressed from"
        ) from None
    return saved_plan, compressed.eval()
