"""Rewrite an exported ONNX graph so quantized weights are stored as int8 + DequantizeLinear.

The exporter folds `codes * scale` into float initializers; each initializer equal to a
quantized module's dequantized weight (or its transpose) is replaced by its int8 codes, the
per-channel scales and a DequantizeLinear node, so the file holds real int8 weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from mmcompress.graph.onnx_rewrite import digest as _digest
from mmcompress.quant.modules import QUANT_MODULES


def quantized_weights(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Digest of each dequantized weight (and 2-D transpose) -> (int8 codes, steps, zero points, axis).

    Group-wise weights (several steps per channel) are left as float initializers: per-axis
    DequantizeLinear cannot express them (4-bit MatMulNBits export is the quantization suite's).
    """
    table = {}
    for module in model.modules():
        if isinstance(module, QUANT_MODULES) and module.scale.shape[1] == 1:  # one step per channel
            codes = module.qweight.cpu().numpy()
            scale = module.scale[:, 0].cpu().numpy().astype(np.float32)
            zero = module._zero()[:, 0].cpu().numpy()
            weight = module.dequantized_weight().cpu().numpy()
            table[_digest(weight)] = (codes, scale, zero, 0)
            if weight.ndim == 2:
                table[_digest(weight.T)] = (np.ascontiguousarray(codes.T), scale, zero, 1)
    return table


def rewrite_int8(onnx_model: onnx.ModelProto, model: nn.Module) -> int:
    """Replace matching float initializers with int8 + DequantizeLinear; returns how many.

    Example:
        >>> n = rewrite_int8(onnx.load("model.onnx"), quantized_torch_model)
    """
    table = quantized_weights(model)
    graph = onnx_model.graph
    replaced, new_nodes = 0, []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        entry = table.get(_digest(array))
        if entry is None or entry[0].shape != array.shape:
            continue
        codes, scale, zero, axis = entry
        name = init.name
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(zero.astype(np.int8), f"{name}_zero"),
            ]
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                [name],
                axis=axis,
                name=f"{name}_dequantize",
            )
        )
        replaced += 1
    for node in reversed(new_nodes):  # initializers feed DQ nodes placed first: still topologically sorted
        graph.node.insert(0, node)
    return replaced
