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

from mmcompress.graph.onnx_int8 import _digest
from mmcompress.quant.modules import QuantLinear


def _dynamic_weights(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """Digest of each W8A8-dynamic weight as (in, out) or (out, in) -> (codes (in, out), steps, transposed)."""
    table = {}
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.act_dynamic:
            codes = module.qweight.cpu().numpy()  # (out, in)
            scale = module.scale[:, 0].cpu().numpy().astype(np.float32)
            weight = module.dequantized_weight().cpu().numpy()
            table[_digest(weight.T)] = (np.ascontiguousarray(codes.T), scale, False)  # MatMul(x, W^T)
            table[_digest(weight)] = (np.ascontiguousarray(codes.T), scale, True)  # Gemm(x, W, transB=1)
    return table


def _gemm_is_plain(node: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (
        attrs.get("transB", 0) == 1
        and attrs.get("transA", 0) == 0
        and attrs.get("alpha", 1.0) == 1.0
        and (attrs.get("beta", 1.0) == 1.0)
    )


def rewrite_dynamic_int8(proto: onnx.ModelProto, model: nn.Module) -> int:
    """Replace matching MatMul/Gemm nodes with the dynamic-quantization chain; returns how many.

    Example:
        >>> n = rewrite_dynamic_int8(proto, w8a8_model)
    """
    table = _dynamic_weights(model)
    if not table:
        return 0
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, used, count = [], set(), 0
    for node in graph.node:
        weight_name = node.input[1] if len(node.input) > 1 else None
        init = inits.get(weight_name)
        entry = None
        if init is not None and init.data_type == onnx.TensorProto.FLOAT:
            entry = table.get(_digest(numpy_helper.to_array(init)))
        ok = entry is not None and (
            (node.op_type == "MatMul" and not entry[2])
            or (node.op_type == "Gemm" and entry[2] and _gemm_is_plain(node))
        )
        if not ok:
            new_nodes.append(node)
            continue
        codes, scale, _ = entry
        p = f"{node.name or weight_name}_w8a8"
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes, f"{p}_wq"),
                numpy_helper.from_array(np.zeros(codes.shape[1], dtype=np.int8), f"{p}_wzp"),
                numpy_helper.from_array(scale, f"{p}_ws"),
            ]
        )
        out = node.output[0]
        chain = [
            helper.make_node("DynamicQuantizeLinear", [node.input[0]], [f"{p}_xq", f"{p}_xs", f"{p}_xzp"]),
            helper.make_node("MatMulInteger", [f"{p}_xq", f"{p}_wq", f"{p}_xzp", f"{p}_wzp"], [f"{p}_i32"]),
            helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f32"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_xs", f"{p}_ws"], [f"{p}_step"]),
        ]
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        chain.append(helper.make_node("Mul", [f"{p}_f32", f"{p}_step"], [f"{p}_mm" if has_bias else out]))
        if has_bias:
            chain.append(helper.make_node("Add", [f"{p}_mm", node.input[2]], [out]))
        new_nodes.extend(chain)
        used.add(weight_name)
        count += 1
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    for name in used - still_used:
        graph.initializer.remove(inits[name])
    return count
