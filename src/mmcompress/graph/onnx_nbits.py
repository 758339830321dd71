"""Rewrite MatMul/Gemm nodes of 4-bit group-quantized Linear layers into ONNX Runtime's MatMulNBits.

MatMulNBits (com.microsoft) stores unsigned 4-bit codes two per byte, blocks of `block_size`
inputs per output column with one step each (and a zero point, default 8): our signed codes
plus 8 are exactly its codes, so the kernel computes the weights PyTorch computes with.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from mmcompress.graph.onnx_int8 import _digest
from mmcompress.quant.modules import QuantLinear

BLOCK_SIZES = (16, 32, 64, 128, 256)


def _pack_nibbles(u4: np.ndarray) -> np.ndarray:
    """(..., 2m) values 0..15 -> (..., m) bytes, element 2i in the low nibble."""
    return (u4[..., 0::2] | (u4[..., 1::2] << 4)).astype(np.uint8)


def _nbits_weights(model: nn.Module) -> dict[str, dict]:
    table = {}
    for module in model.modules():
        if not isinstance(module, QuantLinear) or module.bits != 4 or module.act_dynamic:
            continue
        n, k = module.qweight.shape
        blocks = module.scale.shape[1]
        block = k // blocks
        if block not in BLOCK_SIZES or blocks * block != k:
            continue
        codes = module.qweight.cpu().numpy().astype(np.int16) + 8  # (N, K) in 0..15
        packed = _pack_nibbles(codes.reshape(n, blocks, block).astype(np.uint8))  # (N, blocks, block/2)
        entry = {
            "B": packed,
            "scales": module.scale.cpu().numpy().astype(np.float32).reshape(-1),
            "K": k,
            "N": n,
            "block": block,
        }
        if hasattr(module, "zero_point"):
            zp = module.zero_point.cpu().numpy().astype(np.int16) + 8  # (N, blocks)
            if blocks % 2:
                zp = np.concatenate([zp, np.zeros((n, 1), dtype=np.int16)], axis=1)
            entry["zero_points"] = _pack_nibbles(zp.astype(np.uint8)).reshape(-1)
        weight = module.dequantized_weight().cpu().numpy()
        table[_digest(weight.T)] = {**entry, "gemm": False}
        table[_digest(weight)] = {**entry, "gemm": True}
    return table


def rewrite_matmul_nbits(proto: onnx.ModelProto, model: nn.Module) -> int:
    """Replace MatMul/Gemm nodes whose weight is a 4-bit grouped QuantLinear; returns how many.

    Example:
        >>> n = rewrite_matmul_nbits(proto, w4_model)
    """
    from mmcompress.graph.onnx_dynamic import _gemm_is_plain

    table = _nbits_weights(model)
    if not table:
        return 0
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, used = [], set()
    for node in graph.node:
        init = inits.get(node.input[1]) if len(node.input) > 1 else None
        entry = None
        if init is not None and init.data_type == onnx.TensorProto.FLOAT and node.op_type in ("MatMul", "Gemm"):
            entry = table.get(_digest(numpy_helper.to_array(init)))
        if entry is None or entry["gemm"] != (node.op_type == "Gemm") or (entry["gemm"] and not _gemm_is_plain(node)):
            new_nodes.append(node)
            continue
        p = f"{node.name or node.input[1]}_nbits"
        graph.initializer.extend(
            [numpy_helper.from_array(entry["B"], f"{p}_B"), numpy_helper.from_array(entry["scales"], f"{p}_scales")]
        )
        inputs = [node.input[0], f"{p}_B", f"{p}_scales"]
        if "zero_points" in entry:
            graph.initializer.append(numpy_helper.from_array(entry["zero_points"], f"{p}_zp"))
            inputs.append(f"{p}_zp")
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        out = f"{p}_mm" if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node(
                "MatMulNBits",
                inputs,
                [out],
                domain="com.microsoft",
                K=entry["K"],
                N=entry["N"],
                bits=4,
                block_size=entry["block"],
            )
        )
        if has_bias:
            new_nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]]))
        used.add(node.input[1])
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    for name in used - still_used:
        graph.initializer.remove(inits[name])
    if used and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(used)
