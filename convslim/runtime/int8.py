"""Static int8 quantization of an exported model with ``onnxruntime.quantization`` (QDQ, per-channel weights).

Steps: ``quant_pre_process`` (shape inference and graph optimisation), calibration on real images through a
``CalibrationDataReader`` (min/max of every activation), ``quantize_static`` in QDQ format. Nodes listed in
``exclude`` stay in fp32.

Types. Activations u8, weights s8. On x86 CPUs without VNNI, ONNX Runtime multiplies u8·s8 with ``vpmaddubsw``,
which adds two u8·s8 products into an s16 and saturates: a fine-tuned dwsep ResNet-20 fell to 10 % top-1 this
way. ``reduce_range`` (7-bit weights) keeps every pair sum within s16; it is on by default unless the CPU
has VNNI (``avx512_vnni`` / ``avx_vnni``: exact s32 accumulation), and the report says which was used.

Accuracy. After quantizing, int8 is compared with fp32 on held-out images (top-1 with labels, else top-1
agreement). When it loses more than ``max_drop``, groups of nodes are put back in fp32 one at a time (the
first conv, which sees raw pixels; the classifier; depthwise convs; then every conv of the worst kind) while
that helps, and every node kept in fp32 is listed with the reason. Speed: convs that int8 makes slower on this
CPU, timed alone (``int8_speed``), stay in fp32 too, and so do the kinds of conv the whole model measured faster
with in fp32 (``int8_whole``; when the fp32 model beats every int8 variant, no node is quantized).

Example:
    >>> info = quantize(Path("model.onnx"), Path("model.int8.onnx"), calibration, Int8Settings())
    >>> info["excluded"]
    []
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from convslim.core.machine import cpu_flags
from convslim.core.samples import INT8_CALIBRATION, SESSION_BATCH
from convslim.errors import UsageError
from convslim.runtime.int8_speed import NodeSpeeds, slower_nodes
from convslim.runtime.int8_whole import kinds_faster_in_fp32
from convslim.runtime.quantize import TYPES, fp32_glue, quantize_nodes


@dataclass(frozen=True)
class Int8Settings:
    """``reduce_range`` None: on unless the CPU has VNNI. ``exclude``: node names, op types or kinds kept in
    fp32. ``max_drop``: accuracy (or agreement) int8 may lose against fp32 before nodes go back to fp32.
    ``speed_check``: time every conv alone in fp32 and int8 at ``speed_batch`` and keep the slower-in-int8 ones
    in fp32 (``int8_speed``), then the kinds of conv the whole model runs faster with in fp32 (``int8_whole``)."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool | None = None
    per_channel: bool = True
    calibration_samples: int = INT8_CALIBRATION
    calibration_batch: int = 64
    exclude: tuple[str, ...] = ()
    max_drop: float = 0.01
    auto_exclude: bool = True
    speed_check: bool = True
    speed_batch: int = 32

    def resolved(self) -> dict:
        for flag in (self.activation_type, self.weight_type):
            if flag not in TYPES:
                raise UsageError(f"int8 type {flag!r}: expected one of {', '.join(TYPES)}")
        reduce = self.reduce_range if self.reduce_range is not None else not cpu_has_vnni()
        return dict(asdict(self), reduce_range=reduce, exclude=list(self.exclude))


@dataclass
class Calibration:
    """Images to calibrate on and, apart from them, images (with labels when known) to check accuracy on."""

    x: torch.Tensor
    held_x: torch.Tensor | None = None
    held_y: torch.Tensor | None = None
    source: str = "calibration data"
    held_source: str = "held-back calibration data"

    @classmethod
    def split(cls, data, samples: int = INT8_CALIBRATION, val=None) -> Calibration:
        """From a convslim ``ArrayData``: the first ``samples`` images calibrate; ``val`` (an ArrayData) checks
        accuracy, or without it up to 1000 images after the calibration ones (held back, never calibrated on)."""
        if val is not None:
            return cls(data.x[:samples], val.x, val.y, data.source, val.source)
        held = slice(samples, samples + 1000)
        if len(data.x) <= samples:  # too few to hold any back: calibrate on half, check on the rest
            samples = max(len(data.x) // 2, 1)
            held = slice(samples, None)
        if not len(data.x[held]):
            return cls(data.x[:samples], source=data.source)  # nothing to hold back: no accuracy check
        y = None if data.y is None else data.y[held]
        return cls(
            data.x[:samples], data.x[held], y, data.source, f"{data.source} (held back, not calibrated on)"
        )


def cpu_has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def preprocess(fp32_path: Path, out_path: Path) -> str | None:
    """``quant_pre_process`` into ``out_path``; returns a note when symbolic shape inference could not finish.

    ORT's own symbolic pass, when it cannot finish, saves ``sym_shape_infer_temp.onnx`` (and its external data
    file) into the current folder and raises a bare ``Exception``. So it runs here first, as
    ``SymbolicShapeInference.infer_shapes`` does but without that save; a model it finishes on is handed on with
    its shapes, one it cannot finish is pre-processed with ONNX shape inference only (and the report says so).
    Any other error is a bug and propagates."""
    model = onnx.load(str(fp32_path))
    inferred = symbolic_shapes(model)
    if inferred is None:
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
        return (
            "symbolic shape inference failed (Incomplete symbolic shape inference); quantized with ONNX shape "
            "inference only"
        )
    shaped = out_path.with_name(f"{out_path.stem}.shapes.onnx")
    onnx.save(inferred, str(shaped))
    try:
        quant_pre_process(str(shaped), str(out_path), skip_symbolic_shape=True)
    finally:
        shaped.unlink(missing_ok=True)
    return None


def symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """ORT's symbolic shape inference of ``model`` (what ``quant_pre_process`` runs first), or None where it
    cannot infer every shape. The steps of ``SymbolicShapeInference.infer_shapes``, less its temp-file save."""
    inference = SymbolicShapeInference(
        int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0
    )
    complete = False
    inference._preprocess(model)
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_ if complete else None


def node_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """Node name → kind for the nodes int8 acts on: conv kinds (first, depthwise, grouped, pointwise, dense)
    and linear (Gemm/MatMul)."""
    weights = {i.name: i.dims for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    kinds = {}
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            kinds[node.name] = "linear"
        elif node.op_type == "Conv":
            kinds[node.name] = _conv_kind(node, weights.get(node.input[1]), graph_inputs)
    return kinds


def _conv_kind(node, dims, graph_inputs) -> str:
    if node.input[0] in graph_inputs:
        return "first conv"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if dims is None:
        return "dense conv"
    if group > 1:
        return "depthwise conv" if dims[1] == 1 else "grouped conv"
    return "pointwise conv" if list(dims[2:]) == [1, 1] else "dense conv"


def user_exclusions(
    kinds: dict[str, str], model: onnx.ModelProto, exclude: tuple[str, ...]
) -> dict[str, str]:
    """Nodes the user asked to keep in fp32, by node name or op type; an entry matching nothing is an error."""
    ops = {n.name: n.op_type for n in model.graph.node}
    found = {}
    for entry in exclude:
        names = [n for n, op in ops.items() if entry in (n, op) or kinds.get(n) == entry]
        if not names:
            raise UsageError(f"--int8-exclude {entry}: no node, op type or kind of that name in the model")
        found.update(dict.fromkeys(names, f"kept in fp32 as asked (--int8-exclude {entry})"))
    return found


def matching(exclude: tuple[str, ...], model: onnx.ModelProto) -> tuple[str, ...]:
    """The entries of ``exclude`` that name a node, op type or kind of ``model`` (an entry may name a node of
    only one of the original and the compressed model: each is quantized with its own)."""
    kinds = node_kinds(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    return tuple(e for e in exclude if any(e in (n, op) or kinds.get(n) == e for n, op in ops.items()))


def check_exclusions(exclude: tuple[str, ...], models: list[onnx.ModelProto]) -> None:
    """Every ``--int8-exclude`` entry names a node, op type or kind of at least one of ``models``, else a
    ``UsageError`` listing what they hold (checked before fine-tuning, on the models as first exported)."""
    found = {e for model in models for e in matching(exclude, model)}
    missing = [e for e in exclude if e not in found]
    if not missing:
        return
    kinds = sorted({k for model in models for k in node_kinds(model).values()})
    ops = sorted({n.op_type for model in models for n in model.graph.node})
    raise UsageError(
        f"--int8-exclude {missing[0]}: no node, op type or kind of that name in the original or the compressed "
        f"model; kinds: {', '.join(kinds) or 'none'}; op types: {', '.join(ops)}"
    )


def scores(fp32_session, int8_session, calibration: Calibration) -> dict:
    """Top-1 of both with labels, else top-1 agreement of int8 with fp32; ``drop`` is what int8 loses."""
    from convslim.runtime.sessions import run_batched

    x = calibration.held_x
    ref = run_batched(fp32_session, x, SESSION_BATCH)
    got = run_batched(int8_session, x, SESSION_BATCH)
    if calibration.held_y is not None:
        y = calibration.held_y[: len(ref)].numpy()
        fp, q = float((ref.argmax(1) == y).mean()), float((got.argmax(1) == y).mean())
        return {"metric": "top1", "fp32": fp, "int8": q, "drop": fp - q, "n": len(ref)}
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    return {"metric": "agreement", "fp32": 1.0, "int8": agree, "drop": 1.0 - agree, "n": len(ref)}


@dataclass
class _Attempt:
    excluded: dict[str, str] = field(default_factory=dict)
    score: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Quantizer:
    """One model being quantized: the pre-processed fp32 file, where the int8 file goes, the images, the
    resolved settings, and sessions on the target (the fp32 one opened once)."""

    pre: Path
    out_path: Path
    calibration: Calibration
    resolved: dict
    fp32_session: object
    session_for: Callable

    def attempt(self, excluded: dict[str, str]) -> _Attempt:
        """Quantize with ``excluded`` kept in fp32, written to ``out_path``, and scored when images are held back."""
        quantize_nodes(self.pre, self.out_path, self.calibration.x, self.resolved, list(excluded))
        if self.calibration.held_x is None:
            return _Attempt(dict(excluded))
        return _Attempt(
            dict(excluded), scores(self.fp32_session, self.session_for(self.out_path), self.calibration)
        )


def quantize(
    fp32_path: Path,
    out_path: Path,
    calibration: Calibration,
    settings: Int8Settings,
    session_for,
    speeds: NodeSpeeds | None = None,
) -> dict:
    """Quantize ``fp32_path`` into ``out_path`` (see the module docstring); ``session_for(path)`` opens a session
    on the target; ``speeds`` remembers per-conv timings across calls (a fresh one: this call only). Returns
    what was done: settings, nodes kept in fp32 with reasons, and int8 vs fp32 scores."""
    resolved = settings.resolved()
    with tempfile.TemporaryDirectory(prefix="convslim-int8-") as scratch:
        pre = Path(scratch) / "pre.onnx"
        notes = [n for n in [preprocess(fp32_path, pre)] if n]
        model = onnx.load(str(pre))
        kinds = node_kinds(model)
        excluded = user_exclusions(kinds, model, settings.exclude)
        if settings.speed_check:
            speeds = speeds if speeds is not None else NodeSpeeds()  # (an empty one is falsy: no ``or``)
            excluded = _speed_exclusions(pre, calibration, settings, (kinds, excluded), speeds)
        quantizer = _Quantizer(pre, out_path, calibration, resolved, session_for(pre), session_for)
        attempt = quantizer.attempt(excluded)
        if settings.auto_exclude and calibration.held_x is not None:
            attempt = _back_to_fp32(quantizer, attempt, kinds)
    return _quantize_info(model, kinds, attempt, resolved, notes)


def _speed_exclusions(pre: Path, calibration, settings: Int8Settings, found: tuple, speeds: NodeSpeeds):
    """``excluded`` plus the convs int8 makes slower alone, then the kinds the whole model runs faster with in
    fp32 (``found``: node kinds, nodes excluded so far)."""
    kinds, excluded = found
    resolved = settings.resolved()
    slower = slower_nodes(pre, resolved, settings.speed_batch, speeds)
    excluded = {**excluded, **{n: r for n, r in slower.items() if n not in excluded}}
    faster = kinds_faster_in_fp32(pre, calibration.x, resolved, excluded, kinds, settings.speed_batch)
    return {**excluded, **faster}


def _quantize_info(model, kinds: dict, attempt: _Attempt, resolved: dict, notes: list[str]) -> dict:
    excluded = [{"node": n, "kind": kinds.get(n, "?"), "reason": r} for n, r in attempt.excluded.items()]
    glue = fp32_glue(model, set(attempt.excluded))  # as quantize_nodes kept them; cheap to derive again
    if glue:
        ops = sorted({n.op_type for n in model.graph.node if n.name in glue})
        notes.append(
            f"{len(glue)} node(s) ({', '.join(ops)}) next to fp32 convs and to no int8 conv or linear stay in "
            "fp32 (quantizing them would only add Quantize/Dequantize pairs)"
        )
    return {
        "settings": resolved,
        "quantized_nodes": len(kinds) - len(attempt.excluded),
        "int8_nodes_total": len(kinds),
        "excluded": excluded,
        "check": attempt.score,
        "fp32_glue": glue,
        "notes": notes,
    }


FALLBACK_ORDER = ("first conv", "linear", "depthwise conv", "grouped conv", "pointwise conv", "dense conv")


def _back_to_fp32(quantizer: _Quantizer, attempt: _Attempt, kinds: dict[str, str]) -> _Attempt:
    """Put node kinds back in fp32, in ``FALLBACK_ORDER``, while int8 loses more than ``max_drop`` and it helps."""
    best = written = attempt
    for kind in FALLBACK_ORDER:
        if best.score.get("drop", 0.0) <= quantizer.resolved["max_drop"]:
            break
        nodes = [n for n, k in kinds.items() if k == kind and n not in best.excluded]
        if not nodes:
            continue
        drop = best.score["drop"]
        reason = f"int8 lost {drop:.1%} {best.score['metric']} with this {kind} in int8"
        trial = written = quantizer.attempt({**best.excluded, **dict.fromkeys(nodes, reason)})
        if trial.score["drop"] < drop:
            for n in nodes:
                trial.excluded[n] += f"; {trial.score['drop']:.1%} with it in fp32"
            best = trial
    if written is not best:  # the kept attempt's file
        quantize_nodes(
            quantizer.pre,
            quantizer.out_path,
            quantizer.calibration.x,
            quantizer.resolved,
            list(best.excluded),
        )
    return best
