"""Rewrite static W8A8 Conv / Linear layers as QDQ: the form ONNX Runtime fuses into QLinearConv,
QLinearMatMul and MatMulIntegerToFloat.

Each layer becomes `QuantizeLinear(x, step, zero) -> DequantizeLinear` on its input (the module's
calibrated uint8 `act_step` / `act_zero`), `DequantizeLinear` on its int8 per-channel codes (axis
0 of the Conv weight, axis 1 of the MatMul weight; the steps recovered from the folded
initializer, so a BatchNorm the exporter folded is included) and, for Conv, an int32 bias with
steps `act_step * weight step` (QLinearConv's bias). ONNX Runtime's QDQ fusions need every
input of a Conv to come from DequantizeLinear and its output to go to a QuantizeLinear (a
Relu/Clip between them is folded away when the quantized range lies inside it).

Where the PyTorch model adds no quantization (a Conv whose output goes to an Add, a pooling or
the graph output) ONNX Runtime would run a float Conv. `requantize_outputs` (see
`onnx_qdq_outputs`) inserts Q/DQ pairs there so the whole network runs on uint8 tensors; those
extra roundings are not in the PyTorch model, which is why the file then agrees with it less
than bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from mmcompress.graph.onnx_int8 import find_module
from mmcompress.graph.onnx_qdq_outputs import (
    fold_unfused_weights,
    min_after_quantize,
    quantize_clipped_pool_inputs,
    quantize_residual_adds,
    relu_min_to_clip,
)
from mmcompress.graph.onnx_rewrite import commit_nodes, digest, linear_keys
from mmcompress.quant.modules import QuantLinear
from mmcompress.quant.qdq_simulation import qdq_ready

INT32_MAX = 2**31 - 1


def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _quantize_input(module: nn.Module, x: str, p: str):
    """Q -> DQ of `x` with the module's calibrated uint8 step / zero point: (nodes, inits, dq name, step)."""
    step = float(module.act_step)
    inits = [_const(f"{p}_xs", step, np.float32), _const(f"{p}_xzp", int(module.act_zero), np.uint8)]
    nodes = [
        helper.make_node("QuantizeLinear", [x, f"{p}_xs", f"{p}_xzp"], [f"{p}_xq"], name=f"{p}_quantize"),
        helper.make_node("DequantizeLinear", [f"{p}_xq", f"{p}_xs", f"{p}_xzp"], [f"{p}_xdq"], name=f"{p}_dq_x"),
    ]
    return nodes, inits, f"{p}_xdq", step


def _dequantize_weight(codes: np.ndarray, steps: np.ndarray, p: str, axis: int):
    """int8 codes + per-channel DequantizeLinear along `axis`: (nodes, inits, float weight name)."""
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(codes.astype(np.int8)), f"{p}_wq"),
        _const(f"{p}_ws", steps, np.float32),
        _const(f"{p}_w_zero", np.zeros(len(steps)), np.int8),
    ]
    node = helper.make_node(
        "DequantizeLinear", [f"{p}_wq", f"{p}_ws", f"{p}_w_zero"], [f"{p}_w"], axis=axis, name=f"{p}_dq_w"
    )
    return [node], inits, f"{p}_w"


def _bias(bias: str, inits: dict, step: float, steps: np.ndarray, p: str):
    """int32 bias codes round(b / (act step * weight step)) + DequantizeLinear, or None if it does not fit."""
    init = inits.get(bias)
    if init is None:
        return None
    values = numpy_helper.to_array(init).astype(np.float64)
    bias_steps = (np.float32(step) * steps.astype(np.float32)).astype(np.float32)
    codes = np.round(values / np.maximum(bias_steps.astype(np.float64), 1e-30))
    if np.abs(codes).max(initial=0) >= INT32_MAX or (bias_steps <= 0).any():
        return None
    tensors = [
        _const(f"{p}_bq", codes, np.int32),
        _const(f"{p}_bs", bias_steps, np.float32),
        _const(f"{p}_bzp", np.zeros(len(steps)), np.int32),
    ]
    node = helper.make_node("DequantizeLinear", [f"{p}_bq", f"{p}_bs", f"{p}_bzp"], [f"{p}_b"], axis=0)
    return [node], tensors, f"{p}_b"


def _usable_steps(steps: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-channel steps with channels whose codes are all zero (steps 0 or denormal) set to the
    largest step: their weights stay zero, and the int32 bias of such a channel stays in range."""
    dead = ~np.any(codes.reshape(len(steps), -1) != 0, axis=1) | (steps <= np.finfo(np.float32).tiny)
    fallback = float(steps[~dead].max()) if (~dead).any() else 1.0
    return np.where(dead, fallback, steps).astype(np.float32)


def _build(module: nn.Module, steps: np.ndarray, node: onnx.NodeProto, inits: dict, p: str):
    """The node's QDQ form: Q -> DQ on the input, DQ on the int8 weight (and int32 bias), same op."""
    codes = module.qweight.cpu().numpy()
    steps = _usable_steps(steps, codes)
    nodes, new_inits, xdq, step = _quantize_input(module, node.input[0], p)
    if node.op_type == "MatMul":  # x @ W^T: weight (in, out), one step per column
        codes = codes.T
    w_nodes, w_inits, w = _dequantize_weight(codes, steps, p, axis=1 if node.op_type == "MatMul" else 0)
    nodes += w_nodes
    new_inits += w_inits
    inputs = [xdq, w]
    if len(node.input) > 2 and node.input[2]:
        built = _bias(node.input[2], inits, step, steps, p)
        if built is None:  # a computed bias (or one too large for int32): leave the layer to the other rewrites
            return None
        nodes += built[0]
        new_inits += built[1]
        inputs.append(built[2])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    nodes.append(helper.make_node(node.op_type, inputs, list(node.output), name=node.name or p, **attrs))
    return nodes, new_inits


def _gemm_is_plain(node: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0
    return plain and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def _find(node: onnx.NodeProto, init, convs: dict, linears: dict):
    """(module, steps) when the node is a Conv / MatMul / plain Gemm of a QDQ-ready layer."""
    if init is None or init.data_type != onnx.TensorProto.FLOAT:
        return None
    if node.op_type == "Conv":
        found = find_module(numpy_helper.to_array(init), convs)
        return None if found is None else (convs.pop(found[0]), found[1][:, 0])
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and _gemm_is_plain(node)):
        entry = linears.get(digest(numpy_helper.to_array(init)))
        if entry is not None and entry[0] == (node.op_type == "Gemm"):
            return entry[1], entry[1].scale[:, 0].cpu().numpy().astype(np.float32)
    return None


def _replace(proto: onnx.ModelProto, convs: dict, linears: dict) -> int:
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, used, count = [], set(), 0
    for i, node in enumerate(graph.node):
        found = _find(node, inits.get(node.input[1]) if len(node.input) > 1 else None, convs, linears)
        built = None if found is None else _build(*found, node, inits, f"{node.name or f'{node.op_type}{i}'}_qdq")
        if built is None:
            new_nodes.append(node)
            continue
        count += 1
        new_nodes.extend(built[0])
        graph.initializer.extend(built[1])
        used.update(n for n in node.input[1:] if n in inits)
    commit_nodes(graph, new_nodes, used, inits)
    return count


def rewrite_qdq(proto: onnx.ModelProto, model: nn.Module, requantize: bool = True) -> int:
    """Rewrite every static W8A8 Conv2d / Linear (symmetric per-channel weights) as QDQ; returns how many.

    Args:
        proto: the traced graph (edited in place).
        model: the quantized PyTorch model it was traced from.

    Example:
        >>> n = rewrite_qdq(proto, w8a8_static_model)
    """
    linears, convs = {}, {}
    for name, module in model.named_modules():
        if not qdq_ready(module):
            continue
        if isinstance(module, QuantLinear):
            for key, is_gemm in linear_keys(module.dequantized_weight().cpu().numpy()).items():
                linears[key] = (is_gemm, module)
        else:
            convs[name] = module
    count = _replace(proto, convs, linears) if linears or convs else 0
    if count:
        relu_min_to_clip(proto.graph)
        min_after_quantize(proto.graph)
        if requantize:
            quantize_residual_adds(proto.graph)
            quantize_clipped_pool_inputs(proto.graph)
        fold_unfused_weights(proto.graph)
    return count
