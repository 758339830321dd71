"""Rewrite MatMul/Gemm (Linear) and Conv nodes of W8A8 layers into ONNX Runtime's integer kernels.

Every form feeds uint8 activations and int8 per-channel weights to MatMulInteger (u8s8, the fast
x86 path), then scales the int32 result back to float:
- dynamic per tensor: DynamicQuantizeLinear (ONNX Runtime fuses the chain into
  DynamicQuantizeMatMul);
- dynamic per token: step = max|row| / 127 per token, codes round(x / step) + 128 (zero point 128);
- static: QuantizeLinear with the calibrated step and zero point.
Conv layers (inputs per tensor) become ConvInteger with the same attributes. Linear layers with
steps per group of inputs (W4A8) run one MatMulInteger per group and add the scaled sums.
A SmoothQuant factor is already in the traced graph (a Mul before the layer). The integers are
exactly those the PyTorch model simulates. Static layers go through this path only with
`export_onnx(..., static_format="integer")` (bit-exact, slower on ONNX Runtime); by default they
are exported as QDQ (`onnx_qdq`), which ONNX Runtime fuses into QLinearConv / QGemm.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from mmcompress.graph.onnx_int8 import find_module
from mmcompress.graph.onnx_rewrite import commit_nodes, linear_keys, replace_linear_nodes
from mmcompress.quant.activations import TOKEN_LEVELS
from mmcompress.quant.modules import QuantConv2d, QuantLinear

FLOAT = onnx.TensorProto.FLOAT


def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _quantize_input(entry: dict, x: str, p: str):
    """Nodes producing the uint8 input codes `{p}_xq`, its zero point and its step (a name)."""
    if entry["mode"] == "static":
        inits = [_const(f"{p}_xs", entry["step"], np.float32), _const(f"{p}_xzp", entry["zero"], np.uint8)]
        return [helper.make_node("QuantizeLinear", [x, f"{p}_xs", f"{p}_xzp"], [f"{p}_xq"])], inits
    if entry["granularity"] == "per_tensor":
        return [helper.make_node("DynamicQuantizeLinear", [x], [f"{p}_xq", f"{p}_xs", f"{p}_xzp"])], []
    inits = [
        _const(f"{p}_tiny", np.finfo(np.float32).tiny, np.float32),
        _const(f"{p}_levels", TOKEN_LEVELS, np.float32),
        _const(f"{p}_offset", 128.0, np.float32),
        _const(f"{p}_xzp", 128, np.uint8),
    ]
    nodes = [
        helper.make_node("Abs", [x], [f"{p}_abs"]),
        helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], axes=[-1], keepdims=1),
        helper.make_node("Max", [f"{p}_amax", f"{p}_tiny"], [f"{p}_amax1"]),
        helper.make_node("Div", [f"{p}_amax1", f"{p}_levels"], [f"{p}_xs"]),
        helper.make_node("Div", [x, f"{p}_xs"], [f"{p}_scaled"]),
        helper.make_node("Round", [f"{p}_scaled"], [f"{p}_rounded"]),
        helper.make_node("Add", [f"{p}_rounded", f"{p}_offset"], [f"{p}_shifted"]),
        helper.make_node("Cast", [f"{p}_shifted"], [f"{p}_xq"], to=onnx.TensorProto.UINT8),
    ]
    return nodes, inits


def _build(entry: dict, x: str, out: str, p: str):
    if entry["scale"].ndim == 2:  # steps per group of inputs (W4A8)
        return _build_grouped(entry, x, out, p)
    nodes, inits = _quantize_input(entry, x, p)
    inits += [
        numpy_helper.from_array(entry["codes"], f"{p}_wq"),
        _const(f"{p}_wzp", np.zeros(entry["codes"].shape[1]), np.int8),
        numpy_helper.from_array(entry["scale"], f"{p}_ws"),
    ]
    nodes += [
        helper.make_node("MatMulInteger", [f"{p}_xq", f"{p}_wq", f"{p}_xzp", f"{p}_wzp"], [f"{p}_i32"]),
        helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f32"], to=FLOAT),
    ]
    if entry["granularity"] == "per_token":  # steps per row: keep ORT's MatMulIntegerToFloat fusion
        nodes += [  # (which takes one input step or one per column) away from this chain
            helper.make_node("Mul", [f"{p}_f32", f"{p}_xs"], [f"{p}_fx"]),
            helper.make_node("Mul", [f"{p}_fx", f"{p}_ws"], [out]),
        ]
    else:  # the pattern ONNX Runtime fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat
        nodes += [
            helper.make_node("Mul", [f"{p}_xs", f"{p}_ws"], [f"{p}_step"]),
            helper.make_node("Mul", [f"{p}_f32", f"{p}_step"], [out]),
        ]
    return nodes, inits


def _build_grouped(entry: dict, x: str, out: str, p: str):
    """Grouped weight steps (W4A8): per group of inputs, a MatMulInteger on that slice of the input
    codes and of the weight codes (codes - zero point, int8), scaled by the group's (N,) steps;
    the groups' sums added, times the input step. The same integers as the PyTorch model."""
    nodes, inits = _quantize_input(entry, x, p)
    codes, steps = entry["codes"], entry["scale"]  # (K, N) int8, (N, G)
    groups = steps.shape[1]
    size = codes.shape[0] // groups
    inits += [_const(f"{p}_wzp", np.zeros(codes.shape[1]), np.int8), _const(f"{p}_axis", [-1], np.int64)]
    scaled = []
    for g in range(groups):
        q = f"{p}_g{g}"
        inits += [
            _const(f"{q}_start", [g * size], np.int64),
            _const(f"{q}_end", [(g + 1) * size], np.int64),
            numpy_helper.from_array(np.ascontiguousarray(codes[g * size : (g + 1) * size]), f"{q}_wq"),
            numpy_helper.from_array(np.ascontiguousarray(steps[:, g]), f"{q}_ws"),
        ]
        nodes += [
            helper.make_node("Slice", [f"{p}_xq", f"{q}_start", f"{q}_end", f"{p}_axis"], [f"{q}_xq"]),
            helper.make_node("MatMulInteger", [f"{q}_xq", f"{q}_wq", f"{p}_xzp", f"{p}_wzp"], [f"{q}_i32"]),
            helper.make_node("Cast", [f"{q}_i32"], [f"{q}_f32"], to=FLOAT),
            helper.make_node("Mul", [f"{q}_f32", f"{q}_ws"], [f"{q}_scaled"]),
        ]
        scaled.append(f"{q}_scaled")
    nodes += [
        helper.make_node("Sum", scaled, [f"{p}_sum"]),
        helper.make_node("Mul", [f"{p}_sum", f"{p}_xs"], [out]),
    ]
    return nodes, inits


def _build_conv(entry: dict, node: onnx.NodeProto, p: str):
    """Conv -> (Dynamic)QuantizeLinear + ConvInteger + Cast + Mul (+ Add bias), same attributes."""
    nodes, inits = _quantize_input(entry, node.input[0], p)
    out_channels = entry["codes"].shape[0]
    inits += [
        numpy_helper.from_array(entry["codes"], f"{p}_wq"),
        _const(f"{p}_wzp", 0, np.int8),  # symmetric: one zero (ConvInteger takes a scalar only)
        numpy_helper.from_array(entry["scale"].reshape(1, out_channels, 1, 1), f"{p}_ws"),
    ]
    has_bias = len(node.input) > 2 and node.input[2]
    out = f"{p}_out" if has_bias else node.output[0]
    nodes += [
        helper.make_node(
            "ConvInteger", [f"{p}_xq", f"{p}_wq", f"{p}_xzp", f"{p}_wzp"], [f"{p}_i32"], **_attributes(node)
        ),
        helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f32"], to=FLOAT),
        helper.make_node("Mul", [f"{p}_xs", f"{p}_ws"], [f"{p}_step"]),
        helper.make_node("Mul", [f"{p}_f32", f"{p}_step"], [out]),
    ]
    if has_bias:
        inits.append(_const(f"{p}_bshape", [1, out_channels, 1, 1], np.int64))
        nodes += [
            helper.make_node("Reshape", [node.input[2], f"{p}_bshape"], [f"{p}_b4"]),
            helper.make_node("Add", [out, f"{p}_b4"], [node.output[0]]),
        ]
    return nodes, inits


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _replace_convs(proto: onnx.ModelProto, layers: dict[str, QuantConv2d]) -> int:
    """Swap every Conv whose weight is a W8A8 layer's (also with a BatchNorm folded in by the
    exporter: the per-channel steps absorb its scale) for its integer chain; returns how many."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, used = [], set()
    for i, node in enumerate(graph.node):
        init = inits.get(node.input[1]) if node.op_type == "Conv" else None
        found = find_module(numpy_helper.to_array(init), layers) if init is not None else None
        if found is None:
            new_nodes.append(node)
            continue
        name, steps, _ = found
        entry = {**_entry(layers.pop(name)), "scale": steps[:, 0].astype(np.float32)}
        nodes, initializers = _build_conv(entry, node, f"{node.name or f'conv{i}'}_w8a8")
        new_nodes.extend(nodes)
        graph.initializer.extend(initializers)
        used.add(node.input[1])
    commit_nodes(graph, new_nodes, used, inits)
    return len(used)


def _entry(module: QuantLinear | QuantConv2d) -> dict:
    spec = module.act
    entry = {
        "mode": spec.mode,
        "granularity": spec.granularity,
        "codes": np.ascontiguousarray(module.qweight.cpu().numpy().T)  # Linear: (in, out) int8
        if isinstance(module, QuantLinear)
        else module.qweight.cpu().numpy(),  # Conv2d: (out, in / groups, kh, kw) int8
        "scale": module.scale[:, 0].cpu().numpy().astype(np.float32),  # (out,)
    }
    if isinstance(module, QuantLinear) and (module.scale.shape[1] > 1 or hasattr(module, "zero_point")):
        codes = module.qweight.cpu().numpy().astype(np.int16)  # W4A8: codes - zero point, steps per group
        zero = module._zero().cpu().numpy().astype(np.int16)
        codes = codes - np.repeat(zero, codes.shape[1] // zero.shape[1], axis=1)
        entry["codes"] = np.ascontiguousarray(codes.T.astype(np.int8))  # (in, out)
        entry["scale"] = module.scale.cpu().numpy().astype(np.float32)  # (out, groups)
    if spec.mode == "static":
        entry["step"], entry["zero"] = float(module.act_step), int(module.act_zero)
    return entry


def rewrite_w8a8(proto: onnx.ModelProto, model: nn.Module) -> int:
    """Replace the MatMul/Gemm/Conv nodes of W8A8 layers with integer kernels; returns how many.

    Example:
        >>> n = rewrite_w8a8(proto, w8a8_model)
    """
    linear, conv = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear) and module.act is not None:
            entry = _entry(module)
            for key, is_gemm in linear_keys(module.dequantized_weight().cpu().numpy()).items():
                linear[key] = (is_gemm, entry)
        elif isinstance(module, QuantConv2d) and module.act is not None:
            conv[name] = module
    count = replace_linear_nodes(proto, linear, _build, "w8a8") if linear else 0
    return count + (_replace_convs(proto, conv) if conv else 0)
