"""Rewrite an exported ONNX graph so every quantized weight is stored in its integer form.

The exporter folds `codes * step` into float initializers, and folds a BatchNorm that follows a
Conv into that weight too (per output channel). An initializer is recognised as a quantized
module's weight when it equals `(codes - zero) * s'` with one factor `s'` per step group (the
module's own steps, or its steps times BatchNorm's scale); `weight_steps` finds `s'`. Then:
codes packed (4-bit nibbles, two per byte, or int8 for 5-8 bits) + a small Cast/Reshape/Mul
chain that rebuilds the float weight. ONNX Runtime folds that chain once when the session loads,
in any session: the file holds the integer form and runs as fast as the float file. (A
DequantizeLinear on the weight would not do: sessions with ONNX Runtime's QDQ fusions on, the
default, keep DequantizeLinear nodes for those fusions and dequantize the weight on every call.)
`unconverted_layers` names the quantized layers whose weights are still float in a graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from mmcompress.quant.modules import QUANT_MODULES
from mmcompress.quant.recurrent import QuantRNN

FLOAT = onnx.TensorProto.FLOAT
RTOL = 1e-5  # weights equal up to float rounding of the exporter's BatchNorm folding


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module for every module holding integer codes + steps."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_MODULES)}


def centred_codes(module: nn.Module) -> np.ndarray:
    """(codes - zero point) as float64, shaped (out, G, g) like the module's steps (out, G)."""
    codes = module.qweight.cpu().numpy().astype(np.float64)
    groups = module.scale.shape[1]
    zero = module._zero().cpu().numpy().astype(np.float64)[:, :, None]  # (out, G, 1)
    return codes.reshape(codes.shape[0], groups, -1) - zero


def weight_steps(weight: np.ndarray, centred: np.ndarray) -> np.ndarray | None:
    """Steps s' (out, G) with weight == centred * s' up to float rounding, else None.

    Args:
        weight: a float initializer in the module's layout (out, ...).
        centred: (out, G, g) codes minus zero points.

    Example:
        >>> weight_steps(np.array([[2.0, -4.0]]), np.array([[[1.0, -2.0]]]))
        array([[2.]])
    """
    if weight.size != centred.size:
        return None
    w = weight.astype(np.float64).reshape(centred.shape)
    energy = (centred * centred).sum(-1)  # (out, G)
    steps = np.where(energy > 0, (w * centred).sum(-1) / np.maximum(energy, 1e-300), 0.0)
    error = np.abs(w - centred * steps[..., None]).max()
    return steps if error <= RTOL * max(float(np.abs(w).max()), 1e-30) else None


def match_weight(array: np.ndarray, module: nn.Module) -> tuple[np.ndarray, bool] | None:
    """(steps s', transposed) when a float initializer is the module's weight (or its 2-D transpose)."""
    shape = tuple(module.qweight.shape)
    centred = centred_codes(module)
    if tuple(array.shape) == shape:
        steps = weight_steps(array, centred)
        if steps is not None:
            return steps, False
    if array.ndim == 2 and tuple(array.shape) == shape[::-1]:
        steps = weight_steps(np.ascontiguousarray(array.T), centred)
        if steps is not None:
            return steps, True
    return None


def find_module(array: np.ndarray, layers: dict[str, nn.Module]) -> tuple[str, np.ndarray, bool] | None:
    """The first quantized layer whose weight this initializer holds: (name, steps, transposed)."""
    for name, module in layers.items():
        if array.size != module.qweight.numel():
            continue
        found = match_weight(array, module)
        if found is not None:
            return name, *found
    return None


def _pack_nibbles(u4: np.ndarray) -> np.ndarray:
    """Flat values 0..15 -> bytes, element 2i in the low nibble (odd counts padded with 0)."""
    flat = np.concatenate([u4.ravel(), np.zeros(u4.size % 2, dtype=u4.dtype)]).astype(np.uint8)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _grouped_chain(module: nn.Module, steps: np.ndarray, out: str, p: str, transposed: bool):
    """Nodes + initializers rebuilding `out` = (codes - zero) * steps from packed codes."""
    codes = module.qweight.cpu().numpy()
    n_out, groups = steps.shape
    zero = module._zero().cpu().numpy().astype(np.float32).reshape(n_out, groups, 1)
    shape3 = [n_out, groups, codes.size // (n_out * groups)]
    inits = [
        _const(f"{p}_shape3", shape3, np.int64),
        _const(f"{p}_steps", steps.reshape(n_out, groups, 1), np.float32),
        _const(f"{p}_wshape", codes.shape, np.int64),
    ]
    nodes = []
    if module.bits <= 4:  # two codes per byte, offset 8 into 0..15
        packed = _pack_nibbles((codes.astype(np.int16) + 8).astype(np.uint8))
        inits += [
            numpy_helper.from_array(packed, f"{p}_u4"),
            _const(f"{p}_four", 4, np.uint8),
            _const(f"{p}_sixteen", 16.0, np.float32),
            _const(f"{p}_col", [-1, 1], np.int64),
            _const(f"{p}_start", [0], np.int64),
            _const(f"{p}_end", [codes.size], np.int64),
            _const(f"{p}_offset", zero + 8.0, np.float32),
        ]
        nodes += [
            helper.make_node("BitShift", [f"{p}_u4", f"{p}_four"], [f"{p}_hi8"], direction="RIGHT"),
            helper.make_node("Cast", [f"{p}_hi8"], [f"{p}_hi"], to=FLOAT),
            helper.make_node("Cast", [f"{p}_u4"], [f"{p}_all"], to=FLOAT),
            helper.make_node("Mul", [f"{p}_hi", f"{p}_sixteen"], [f"{p}_hi16"]),
            helper.make_node("Sub", [f"{p}_all", f"{p}_hi16"], [f"{p}_lo"]),
            helper.make_node("Reshape", [f"{p}_lo", f"{p}_col"], [f"{p}_loc"]),
            helper.make_node("Reshape", [f"{p}_hi", f"{p}_col"], [f"{p}_hic"]),
            helper.make_node("Concat", [f"{p}_loc", f"{p}_hic"], [f"{p}_pairs"], axis=1),
            helper.make_node("Reshape", [f"{p}_pairs", f"{p}_flat"], [f"{p}_codes_pad"]),
            helper.make_node("Slice", [f"{p}_codes_pad", f"{p}_start", f"{p}_end"], [f"{p}_codes"]),
        ]
        inits.append(_const(f"{p}_flat", [-1], np.int64))
    else:
        inits += [numpy_helper.from_array(codes, f"{p}_int8"), _const(f"{p}_offset", zero, np.float32)]
        nodes.append(helper.make_node("Cast", [f"{p}_int8"], [f"{p}_codes"], to=FLOAT))
    final = f"{p}_w" if transposed else out
    nodes += [
        helper.make_node("Reshape", [f"{p}_codes", f"{p}_shape3"], [f"{p}_g"]),
        helper.make_node("Sub", [f"{p}_g", f"{p}_offset"], [f"{p}_c"]),
        helper.make_node("Mul", [f"{p}_c", f"{p}_steps"], [f"{p}_gw"]),
        helper.make_node("Reshape", [f"{p}_gw", f"{p}_wshape"], [final]),
    ]
    if transposed:
        nodes.append(helper.make_node("Transpose", [final], [out], perm=[1, 0]))
    return nodes, inits


def rewrite_int8(onnx_model: onnx.ModelProto, model: nn.Module) -> int:
    """Replace every float initializer that holds a quantized weight by its integer form; returns how many.

    Example:
        >>> n = rewrite_int8(onnx.load("model.onnx"), quantized_torch_model)
    """
    layers = quant_layers(model)
    graph = onnx_model.graph
    replaced, new_nodes = 0, []
    for init in list(graph.initializer):
        if init.data_type != FLOAT:
            continue
        found = find_module(numpy_helper.to_array(init), layers)
        if found is None:
            continue
        name, steps, transposed = found
        module = layers.pop(name)
        nodes, inits = _grouped_chain(module, steps, init.name, f"{init.name}_q", transposed)
        graph.initializer.remove(init)
        graph.initializer.extend(inits)
        new_nodes.extend(nodes)
        replaced += 1
    for node in reversed(new_nodes):  # initializers feed these nodes placed first: still topologically sorted
        graph.node.insert(0, node)
    return replaced


def unconverted_layers(onnx_model: onnx.ModelProto, model: nn.Module) -> list[str]:
    """Names of quantized layers whose weight is still a float initializer of the graph.

    Example:
        >>> unconverted_layers(proto, quantized_model)
        []
    """
    layers = quant_layers(model)
    recurrent = {n for n, m in model.named_modules() if isinstance(m, QuantRNN)}
    layers = {n: m for n, m in layers.items() if n.rpartition(".codes.")[0] not in recurrent}
    left = sorted(recurrent)  # ONNX LSTM/GRU take float W/R/B inputs: their matrices ship dequantized
    for init in onnx_model.graph.initializer:
        if init.data_type == FLOAT and layers:
            found = find_module(numpy_helper.to_array(init), layers)
            if found is not None:
                left.append(found[0])
                layers.pop(found[0])
    return sorted(left)
