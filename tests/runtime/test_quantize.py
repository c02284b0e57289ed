"""Glue nodes (Add, Relu, Flatten, ...) stay fp32 where no int8 conv or linear reads or writes their tensors."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from convslim.runtime.quantize import fp32_glue, quantize_nodes


def _chain() -> onnx.ModelProto:
    """x -> conv_a -> relu -> conv_b -> add(conv_b, relu) -> flatten -> gemm -> y"""
    rng = np.random.default_rng(0)
    weights = {
        "wa": rng.standard_normal((4, 4, 3, 3)),
        "wb": rng.standard_normal((4, 4, 3, 3)),
        "wg": rng.standard_normal((4 * 6 * 6, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "r"], ["s"], name="add"),
        helper.make_node("Flatten", ["s"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg"], ["y"], name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_glue_between_fp32_convs_stays_fp32_glue_next_to_int8_does_not():
    model = _chain()
    assert fp32_glue(model, {"conv_a", "conv_b"}) == ["relu", "add"]  # flatten feeds the int8 gemm
    assert fp32_glue(model, {"conv_a", "conv_b", "gemm"}) == ["relu", "add", "flatten"]
    assert fp32_glue(model, set()) == []  # every glue node touches an int8 node


def test_quantized_model_has_no_quantize_pair_around_fp32_glue(tmp_path):
    pre, out = tmp_path / "chain.onnx", tmp_path / "chain.int8.onnx"
    onnx.save(_chain(), str(pre))
    settings = {"per_channel": True, "reduce_range": True, "activation_type": "uint8", "weight_type": "int8"}
    settings["calibration_batch"] = 8
    glue = quantize_nodes(pre, out, torch.randn(16, 4, 6, 6), settings, ["conv_a", "conv_b"])
    assert glue == ["relu", "add"]
    quantized = onnx.load(str(out))
    dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for node in quantized.graph.node:
        if node.name in ("relu", "add", "conv_a", "conv_b"):
            assert not set(node.input) & dequantized, f"{node.name} reads a dequantized tensor"
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)  # the gemm is int8
