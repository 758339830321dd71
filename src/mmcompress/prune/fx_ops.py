"""How each traced operation treats the channels of a tensor (graph facts only, no model edits).

`classify` tells the dependency walk (`dependency.py`) what a node does to the channels it
receives: passes them through unchanged (element-wise activations, dropout, pooling, spatial
means, flatten of a (B, C, h, w) map), normalises them per channel, shrinks with them (a
depthwise convolution), couples them (residual add), concatenates them with other features,
consumes them (a layer whose inputs shrink), or blocks (anything else; the reason is named).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
PASS_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu,
    F.selu, F.celu, F.softplus, F.softsign, F.sigmoid, F.tanh, torch.relu, torch.tanh, torch.sigmoid, torch.clamp,
    torch.clip, torch.abs, torch.neg, operator.neg, F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}  # fmt: skip
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clip", "abs", "neg", "contiguous", "float", "detach"}
FLATTEN_REASON = "a flatten other than (B, C) / (B, C, h, w) from dim 1, whose channel layout the walk does not follow"
ADD_OPS = {operator.add, torch.add, operator.sub, torch.sub}
RECURRENT = (nn.LSTM, nn.GRU)


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise Conv2d (one filter per channel): it shrinks together with the channels it receives."""
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


def conv_refusal(module: nn.Module) -> str | None:
    """Why a Conv2d cannot take part in channel pruning (grouped, or depthwise with a multiplier), else None."""
    if not isinstance(module, nn.Conv2d) or module.groups == 1 or is_depthwise(module):
        return None
    if module.groups == module.in_channels:
        return f"is a depthwise convolution with channel multiplier {module.out_channels // module.groups}"
    return f"is a grouped convolution (groups={module.groups}); pruning whole groups is not supported"


def prunable(module: nn.Module) -> bool:
    """Layers whose output units can be removed: Conv2d (groups=1), Linear, one-layer LSTM/GRU."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    if isinstance(module, RECURRENT):
        return module.num_layers == 1 and not module.bidirectional and not getattr(module, "proj_size", 0)
    return isinstance(module, nn.Linear)


def classify(node: fx.Node, came_from: fx.Node, modules: dict, start: fx.Node) -> str:
    """'pass' | 'norm' | 'depthwise' | 'add' | 'cat' | 'consumer' | 'output' | 'ignore', or a blocking
    op's description."""
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        return _classify_module(node, came_from, modules[node.target])
    if node.op == "call_function":
        return _classify_function(node, came_from, start)
    if node.op == "call_method":
        if node.target in PASS_METHODS:
            return "pass"
        if node.target in ("mean", "sum", "amax") and keeps_channel_axis(node):
            return "pass"
        if node.target in ("size", "dim", "to", "type_as") and node.args[0] is came_from:
            return "ignore" if node.target in ("size", "dim") else "pass"
        if node.target == "flatten" or (node.target in ("view", "reshape") and _flattens_to_batch(node)):
            return "pass" if _flatten_ok(node) else FLATTEN_REASON
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


def _classify_module(node: fx.Node, came_from: fx.Node, module: nn.Module) -> str:
    if isinstance(module, PASS_MODULES) or (isinstance(module, nn.PReLU) and module.num_parameters == 1):
        return "pass"
    if isinstance(module, nn.Flatten):
        whole = module.start_dim == 1 and module.end_dim == -1 and len(shape_of(node.args[0]) or ()) in (2, 4)
        return "pass" if whole else FLATTEN_REASON
    if isinstance(module, NORM_MODULES):
        return "norm"
    takes_it = bool(node.args) and node.args[0] is came_from
    if isinstance(module, (nn.Linear, nn.Conv2d, *RECURRENT)) and takes_it:
        if is_depthwise(module):
            return "depthwise"
        if conv_refusal(module):
            multiplier = module.out_channels // module.groups
            kind = f"groups={module.groups}" if module.groups != module.in_channels else f"multiplier {multiplier}"
            return f"grouped convolution {node.target!r} ({kind})"
        return "consumer"
    return f"module {node.target!r} ({type(module).__name__})"


def _classify_function(node: fx.Node, came_from: fx.Node, start: fx.Node) -> str:
    if node.target in PASS_FUNCTIONS:
        return "pass"
    if node.target in ADD_OPS:
        return "add" if all(isinstance(a, fx.Node) for a in node.args[:2]) else "pass"
    if node.target in (operator.mul, torch.mul, operator.truediv) and _broadcast_other(node, came_from):
        return "pass"
    if node.target is getattr:
        return "ignore"  # x.dtype / x.shape: not channel data
    if node.target is operator.getitem and not node.users:
        return "ignore"  # an unused item, e.g. the state in `out, _ = lstm(x)`
    if node.target is operator.getitem and _getitem_keeps_channels(node):
        return "pass"
    if node.target in (torch.cat, torch.concat) and cat_on_channels(node):
        return "cat"
    if node.target is torch.flatten or (node.target is torch.reshape and _flattens_to_batch(node)):
        return "pass" if _flatten_ok(node) else FLATTEN_REASON
    return f"function {getattr(node.target, '__name__', node.target)}"


def _cat_args(node: fx.Node) -> tuple[list, int]:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(tensors), dim


def cat_on_channels(node: fx.Node) -> bool:
    """Concatenation along the channel axis (fusion of features), with known operand widths."""
    tensors, dim = _cat_args(node)
    shapes = [shape_of(t) if isinstance(t, fx.Node) else None for t in tensors]
    if any(shape is None for shape in shapes):
        return False
    rank = len(shapes[0])
    return dim % rank == channel_axis(rank)


def cat_offset(node: fx.Node, came_from: fx.Node) -> int:
    """Channels that precede `came_from` in the concatenation."""
    tensors, _ = _cat_args(node)
    offset = 0
    for t in tensors:
        if t is came_from:
            return offset
        shape = shape_of(t)
        offset += shape[channel_axis(len(shape))]
    return offset


def _broadcast_other(node: fx.Node, came_from: fx.Node) -> bool:
    """x * other / x / other keeps channels when other is a scalar or size 1 on the channel axis."""
    for other in (a for a in node.args if a is not came_from):
        if not isinstance(other, fx.Node):
            continue
        if node.target is operator.truediv and node.args[0] is not came_from:
            return False
        shape = shape_of(other)
        if shape is None or not shape or shape[channel_axis(len(shape))] != 1:
            return False
    return True


def channel_axis(rank: int) -> int:
    return 1 if rank == 4 else rank - 1


def shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def keeps_channel_axis(node: fx.Node) -> bool:
    """A reduction (mean/sum/amax) over dimensions other than the channel axis."""
    rank = len(shape_of(node.args[0]) or ())
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if rank == 0 or dims is None:
        return False
    dims = {d % rank for d in ((dims,) if isinstance(dims, int) else dims)}
    return channel_axis(rank) not in dims


def _getitem_keeps_channels(node: fx.Node) -> bool:
    """Items of a tuple (a recurrent layer's `(output, state)`), or indexing that leaves the last
    (channel) dimension whole, e.g. `out[:, -1]` or `h_n[-1]`."""
    index, shape = node.args[1], shape_of(node.args[0])
    if shape is None:
        return isinstance(index, int)
    if isinstance(index, int):
        return 2 <= len(shape) != 4
    if isinstance(index, slice):
        return len(shape) >= 2
    if isinstance(index, tuple):
        return Ellipsis not in index and (len(index) < len(shape) or index[-1] == slice(None))
    return False


def _flattens_to_batch(node: fx.Node) -> bool:
    """`x.view(B, -1)` / `x.reshape(B, -1)` of a (B, C, ...) map: the same as flatten from dim 1."""
    sizes = node.args[1:] if node.op == "call_method" else node.args[1]
    sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    source, out = shape_of(node.args[0]), shape_of(node)
    return len(sizes) == 2 and sizes[1] == -1 and source is not None and out is not None and out[0] == source[0]


def _flatten_ok(node: fx.Node) -> bool:
    """Flatten from dim 1 to the end of a (B, C) or (B, C, h, w) map: channel c becomes a block of
    h*w columns (channels-last tensors would interleave)."""
    if len(shape_of(node.args[0]) or ()) not in (2, 4):
        return False
    if node.op in ("call_method", "call_function") and node.target in ("view", "reshape", torch.reshape):
        return True  # checked by _flattens_to_batch
    start_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end_dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start_dim == 1 and end_dim == -1


def flattened_positions(node: fx.Node, modules: dict) -> int:
    """h*w when `node` flattens a (B, C, h, w) map from dim 1 (each channel becomes h*w columns)."""
    is_flatten = (
        (node.op == "call_function" and node.target in (torch.flatten, torch.reshape))
        or (node.op == "call_method" and node.target in ("flatten", "view", "reshape"))
        or (node.op == "call_module" and isinstance(modules[node.target], nn.Flatten))
    )
    shape = shape_of(node.args[0]) if is_flatten else None
    if shape is None or len(shape) < 3:
        return 1
    positions = 1
    for size in shape[2:]:
        positions *= int(size)
    return positions
