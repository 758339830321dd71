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

from mmcompress.graph.onnx_rewrite import linear_keys, replace_linear_nodes
from mmcompress.quant.modules import QuantLinear

BLOCK_SIZES = (16, 32, 64, 128, 256)


def _pack_nibbles(u4: np.ndarray) -> np.ndarray:
    """(..., 2m) values 0..15 -> (..., m) bytes, element 2i in the low nibble."""
    return (u4[..., 0::2] | (u4[..., 1::2] << 4)).astype(np.uint8)


def _entry(module: QuantLinear) -> dict | None:
    """MatMulNBits tensors for a 4-bit grouped layer (None when its layout does not fit)."""
    n, k = module.qweight.shape
    blocks = module.scale.shape[1]
    block = k // blocks
    if module.bits != 4 or module.act is not None or block not in BLOCK_SIZES or blocks * block != k:
        return None
    codes = module.qweight.cpu().numpy().astype(np.int16) + 8  # (N, K) in 0..15
    entry = {
        "B": _pack_nibbles(codes.reshape(n, blocks, block).astype(np.uint8)),  # (N, blocks, block / 2)
        "scales": module.scale.cpu().numpy().astype(np.float32).reshape(-1),
        "attrs": {"K": k, "N": n, "bits": 4, "block_size": block},
    }
    if hasattr(module, "zero_point"):
        zp = module.zero_point.cpu().numpy().astype(np.int16) + 8  # (N, blocks)
        if blocks % 2:
            zp = np.concatenate([zp, np.zeros((n, 1), dtype=np.int16)], axis=1)
        entry["zero_points"] = _pack_nibbles(zp.astype(np.uint8)).reshape(-1)
    return entry


def _build(entry: dict, x: str, out: str, p: str):
    initializers = [numpy_helper.from_array(entry["B"], f"{p}_B"), numpy_helper.from_array(entry["scales"], f"{p}_s")]
    inputs = [x, f"{p}_B", f"{p}_s"]
    if "zero_points" in entry:
        initializers.append(numpy_helper.from_array(entry["zero_points"], f"{p}_zp"))
        inputs.append(f"{p}_zp")
    return [helper.make_node("MatMulNBits", inputs, [out], domain="com.microsoft", **entry["attrs"])], initializers


def rewrite_matmul_nbits(proto: onnx.ModelProto, model: nn.Module) -> int:
    """Replace MatMul/Gemm nodes whose weight is a 4-bit grouped QuantLinear; returns how many.

    Example:
        >>> n = rewrite_matmul_nbits(proto, w4_model)
    """
    table = {}
    for module in model.modules():
        entry = _entry(module) if isinstance(module, QuantLinear) else None
        if entry is not None:
            for key, is_gemm in linear_keys(module.dequantized_weight().cpu().numpy()).items():
                table[key] = (is_gemm, entry)
    count = replace_linear_nodes(proto, table, _build, "nbits") if table else 0
    if count and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count
