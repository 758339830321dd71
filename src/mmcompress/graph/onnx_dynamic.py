"""Rewrite MatMul/Gemm nodes of W8A8-dynamic Linear layers into ONNX Runtime's integer kernels.

x -> DynamicQuantizeLinear (uint8, per tensor) -> MatMulInteger with int8 per-channel weights
(u8s8, the fast x86 path) -> Cast -> Mul by x_step * w_step -> (+ bias). ONNX Runtime fuses the
chain into DynamicQuantizeMatMul. The integers are those the PyTorch model simulates.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from mmcompress.graph.onnx_rewrite import linear_keys, replace_linear_nodes
from mmcompress.quant.modules import QuantLinear


def _build(entry: tuple[np.ndarray, np.ndarray], x: str, out: str, p: str):
    codes, scale = entry  # (in, out) int8, (out,) float
    initializers = [
        numpy_helper.from_array(codes, f"{p}_wq"),
        numpy_helper.from_array(np.zeros(codes.shape[1], dtype=np.int8), f"{p}_wzp"),
        numpy_helper.from_array(scale, f"{p}_ws"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [x], [f"{p}_xq", f"{p}_xs", f"{p}_xzp"]),
        helper.make_node("MatMulInteger", [f"{p}_xq", f"{p}_wq", f"{p}_xzp", f"{p}_wzp"], [f"{p}_i32"]),
        helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f32"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}_xs", f"{p}_ws"], [f"{p}_step"]),
        helper.make_node("Mul", [f"{p}_f32", f"{p}_step"], [out]),
    ]
    return nodes, initializers


def rewrite_dynamic_int8(proto: onnx.ModelProto, model: nn.Module) -> int:
    """Replace matching MatMul/Gemm nodes with the dynamic-quantization chain; returns how many.

    Example:
        >>> n = rewrite_dynamic_int8(proto, w8a8_model)
    """
    table = {}
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.act_dynamic:
            entry = (np.ascontiguousarray(module.qweight.cpu().numpy().T), module.scale[:, 0].cpu().numpy())
            for key, is_gemm in linear_keys(module.dequantized_weight().cpu().numpy()).items():
                table[key] = (is_gemm, entry)
    return replace_linear_nodes(proto, table, _build, "w8a8") if table else 0
