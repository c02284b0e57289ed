"""Where ONNX Runtime starts to disagree with PyTorch: the first intermediate value that differs.

When even the *original* model's ONNX output differs from PyTorch beyond the tolerance, the rewrite is not the
cause: an exporter translation or a runtime kernel is. To say which, we run the ``torch.export`` program in
PyTorch and keep every intermediate tensor by its FX node name, ask ORT for the ONNX values of the same names
(the dynamo exporter names values after the FX nodes they come from), and walk them in execution order. The
first value whose error exceeds ``rtol`` × its own scale names the op (ONNX op type and ATen target).

Example:
    >>> first_divergence(program, "original.onnx", (x,), rtol=1e-4)
    {'value': 'hardswish_3', 'onnx_op': 'HardSwish', 'aten': 'aten.hardswish.default', 'max_abs_err': 0.2, ...}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import fx

from convslim.verify.parity import make_session

_ONNX_TYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float64: onnx.TensorProto.DOUBLE}


@torch.no_grad()
def torch_intermediates(program, inputs: tuple) -> dict[str, torch.Tensor]:
    """Every floating-point tensor the exported program computes on ``inputs``, by FX node name, in order."""
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.op == "call_function" and isinstance(out, torch.Tensor) and out.dtype in _ONNX_TYPES:
                values[node.name] = out.detach()
            return out

    Recorder(program.module()).run(*inputs)
    return values


def first_divergence(program, onnx_path: str | Path, inputs: tuple, rtol: float) -> dict | None:
    """The first intermediate value (in execution order) where ORT and PyTorch differ by more than ``rtol`` of its
    scale, with the ops that produced it; None when no shared value differs (or none could be compared)."""
    reference = torch_intermediates(program, inputs)
    model = onnx.load(str(onnx_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    shared = [name for name in reference if name in producers]
    if not shared:
        return None
    existing = {o.name for o in model.graph.output}
    for name in shared:
        if name not in existing:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, _ONNX_TYPES[reference[name].dtype], None)
            )
    session = _session_from_proto(model)
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs, strict=False)}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    for name in shared:
        ref = reference[name].cpu().numpy()
        if got[name].shape != ref.shape:
            continue
        err = float(np.abs(got[name] - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        if err > rtol * max(scale, 1e-12):
            node = producers[name]
            return {
                "value": name,
                "onnx_op": node.op_type,
                "aten": _aten_target(node),
                "max_abs_err": err,
                "scale": scale,
                "compared_values": len(shared),
            }
    return None


def _aten_target(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.fx_node" and "target=" in prop.value:
            return prop.value.split("target=", 1)[1].split("]", 1)[0].removeprefix("torch.ops.")
    return None


def _session_from_proto(model: onnx.ModelProto):
    with tempfile.TemporaryDirectory(prefix="convslim-diagnose-") as scratch:
        path = Path(scratch) / "model.onnx"
        onnx.save(model, str(path))
        return make_session(path)


def divergence_note(which: str, parity: dict, found: dict | None) -> str:
    """One report line: the original disagrees beyond tolerance, so the runtime or exporter is the cause."""
    head = (
        f"the {which} model's own ONNX output differs from PyTorch by {parity['max_abs_err']:.3g} "
        f"(tolerance {parity['tolerance']:.3g}) before any rewrite: ONNX Runtime (or the exporter), not the "
        "rewrite, disagrees"
    )
    if found is None:
        return head + "; no single intermediate value could be singled out"
    aten = f" / {found['aten']}" if found.get("aten") else ""
    return (
        f"{head}; the first intermediate value that differs is {found['value']} from ONNX op "
        f"{found['onnx_op']}{aten} (max abs err {found['max_abs_err']:.3g} at scale {found['scale']:.3g})"
    )
