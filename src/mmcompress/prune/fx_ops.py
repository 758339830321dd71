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
    nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d,
)  # fmt: skip
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
PASS_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu,
    F.selu, F.celu, F.softplus, F.softsign, F.sigmoid, F.tanh, torch.relu, torch.tanh, torch.sigmoid, torch.clamp,
    torch.clip, torch.abs, torch.neg, operator.neg, F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
}  # fmt: skip
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clip", "abs", "neg", "contiguous", "float", "detach"}
FLATTEN_REASON = "a flatten other than (B, C) / (B, C, h, w) from dim 1, whose channel layout the walk does not follow"
ADD_OPS = {operator.add, torch.add, operator.sub, torch.sub}
RECURRENT = (nn.LSTM, nn.GRU)
CONVS = (nn.Conv1d, nn.Conv2d)  # channels on axis 1: (B, C, L) / (B, C, H, W)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # normalise axis 1


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise Conv1d/Conv2d (one filter per channel): it shrinks together with the channels it receives."""
    return isinstance(module, CONVS) and module.groups == module.in_channels == module.out_channels > 1


def conv_refusal(module: nn.Module) -> str | None:
    """Why a convolution cannot take part in channel pruning (grouped, or depthwise with a multiplier), else None."""
    if not isinstance(module, CONVS) or module.groups == 1 or is_depthwise(module):
        return None
    if module.groups == module.in_channels:
        return f"is a depthwise convolution with channel multiplier {module.out_channels // module.groups}"
    return f"is a grouped convolution (groups={module.groups}); pruning whole groups is not supported"


def prunable(module: nn.Module) -> bool:
    """Layers whose output units can be removed: Conv1d/Conv2d (groups=1), Linear, one-layer LSTM/GRU."""
    if isinstance(module, CONVS):
        return module.groups == 1
    if isinstance(module, RECURRENT):
        return module.num_layers == 1 and not module.bidirectional and not getattr(module, "proj_size", 0)
    return isinstance(module, nn.Linear)


def classify(node: fx.Node, came_from: fx.Node, modules: dict, start: fx.Node, first: bool | None = None) -> str:
    """'pass' | 'norm' | 'depthwise' | 'add' | 'cat' | 'consumer' | 'output' | 'ignore', or a blocking
    op's description. `first`: the channels of `came_from` lie on axis 1 (a convolution's output,
    (B, C, L) or (B, C, H, W)) rather than on the last axis; None: decided by rank (axis 1 of rank 4)."""
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        return _classify_module(node, came_from, modules[node.target], first)
    if node.op == "call_function":
        return _classify_function(node, came_from, start, first)
    if node.op == "call_method":
        if node.target in PASS_METHODS:
            return "pass"
        if node.target in ("mean", "sum", "amax") and keeps_channel_axis(node, first):
            return "pass"
        if node.target in ("size", "dim", "to", "type_as") and node.args[0] is came_from:
            return "ignore" if node.target in ("size", "dim") else "pass"
        if node.target == "flatten" or (node.target in ("view", "reshape") and _flattens_to_batch(node)):
            return "pass" if _flatten_ok(node, first) else FLATTEN_REASON
        if node.target in LAYOUT_METHODS:
            return _moves_channels(node, first)
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


def channels_first_after(node: fx.Node, first: bool | None) -> bool | None:
    """Whether the channels of `node`'s output (an op classified 'pass') lie on axis 1: a transpose
    or permute may move them there or to the end; an op that leaves a (B, C) tensor makes the
    question moot (axis 1 is the last)."""
    out = shape_of(node)
    if out is None or first is None and not _is_layout_op(node):
        return first
    axis = _new_channel_axis(node, first)
    if axis is None or len(out) <= 2:
        return None if len(out) <= 2 else first
    return axis == 1 and axis != len(out) - 1


LAYOUT_METHODS = ("transpose", "permute", "squeeze", "unsqueeze")
LAYOUT_FUNCTIONS = (torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze)


def _is_layout_op(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in LAYOUT_METHODS
    return node.op == "call_function" and node.target in LAYOUT_FUNCTIONS


def _new_channel_axis(node: fx.Node, first: bool | None) -> int | None:
    """Where a layout op puts the channel axis of its input (None: not a layout op, or unknown)."""
    source, out = shape_of(node.args[0]), shape_of(node)
    if not _is_layout_op(node) or source is None or out is None:
        return None
    rank = len(source)
    axis = channel_axis(rank, first)
    args = list(node.args[1:])
    if node.target in ("transpose", torch.transpose):
        a, b = (d % rank for d in args[:2])
        return b if axis == a else a if axis == b else axis
    if node.target in ("permute", torch.permute):
        order = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        order = [d % rank for d in order]
        return order.index(axis) if axis in order else None
    if node.target in ("squeeze", torch.squeeze):
        if not args:  # every size-1 axis goes
            return axis - sum(1 for d in range(axis) if source[d] == 1) if source[axis] != 1 else None
        dims = {d % rank for d in (args[0] if isinstance(args[0], (tuple, list)) else args[:1])}
        if axis in dims and source[axis] == 1:
            return None
        return axis - sum(1 for d in dims if d < axis and source[d] == 1)
    dim = args[0] % (rank + 1) if args else None  # unsqueeze
    return None if dim is None else axis + (1 if dim <= axis else 0)


def _moves_channels(node: fx.Node, first: bool | None) -> str:
    """'pass' when a layout op leaves the channels on axis 1 or on the last axis, else the reason."""
    axis, out = _new_channel_axis(node, first), shape_of(node)
    if axis is None or out is None:
        return f"method .{node.target}() that moves or removes the channel axis"
    if axis == len(out) - 1 or axis == 1:
        return "pass"
    return f"method .{node.target}() that puts the channels on axis {axis}"


def _classify_module(node: fx.Node, came_from: fx.Node, module: nn.Module, first: bool | None = None) -> str:
    if isinstance(module, PASS_MODULES) or (isinstance(module, nn.PReLU) and module.num_parameters == 1):
        return "pass"
    rank = len(shape_of(node.args[0]) or ()) if node.args else 0
    if isinstance(module, nn.Flatten):
        whole = module.start_dim == 1 and module.end_dim == -1 and _flattenable(rank, first)
        return "pass" if whole else FLATTEN_REASON
    axis = channel_axis(rank, first) if rank and first is not None else None  # None: not checked
    if isinstance(module, NORM_MODULES):
        wanted = 1 if isinstance(module, BATCH_NORMS) else rank - 1
        if axis is None or axis == wanted:
            return "norm"
        return f"{type(module).__name__} over another axis than the channels"
    takes_it = bool(node.args) and node.args[0] is came_from
    if isinstance(module, (nn.Linear, *CONVS, *RECURRENT)) and takes_it:
        wanted = 1 if isinstance(module, CONVS) else rank - 1
        if axis is not None and axis != wanted:
            return f"{type(module).__name__} {node.target!r} reading another axis than the channels"
        if is_depthwise(module):
            return "depthwise"
        if conv_refusal(module):
            multiplier = module.out_channels // module.groups
            kind = f"groups={module.groups}" if module.groups != module.in_channels else f"multiplier {multiplier}"
            return f"grouped convolution {node.target!r} ({kind})"
        return "consumer"
    return f"module {node.target!r} ({type(module).__name__})"


def _classify_function(node: fx.Node, came_from: fx.Node, start: fx.Node, first: bool | None = None) -> str:
    if node.target in PASS_FUNCTIONS:
        return "pass"
    if node.target in LAYOUT_FUNCTIONS:
        return _moves_channels(node, first)
    if node.target in ADD_OPS:
        return "add" if all(isinstance(a, fx.Node) for a in node.args[:2]) else "pass"
    if node.target in (operator.mul, torch.mul, operator.truediv) and _broadcast_other(node, came_from, first):
        return "pass"
    if node.target is getattr:
        return "ignore"  # x.dtype / x.shape: not channel data
    if node.target is operator.getitem and not node.users:
        return "ignore"  # an unused item, e.g. the state in `out, _ = lstm(x)`
    if node.target is operator.getitem and _getitem_keeps_channels(node, first):
        return "pass"
    if node.target in (torch.cat, torch.concat) and cat_on_channels(node, first):
        return "cat"
    if node.target is torch.flatten or (node.target is torch.reshape and _flattens_to_batch(node)):
        return "pass" if _flatten_ok(node, first) else FLATTEN_REASON
    return f"function {getattr(node.target, '__name__', node.target)}"


def _cat_args(node: fx.Node) -> tuple[list, int]:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(tensors), dim


def cat_on_channels(node: fx.Node, first: bool | None = None) -> bool:
    """Concatenation along the channel axis (fusion of features), with known operand widths."""
    tensors, dim = _cat_args(node)
    shapes = [shape_of(t) if isinstance(t, fx.Node) else None for t in tensors]
    if any(shape is None for shape in shapes):
        return False
    rank = len(shapes[0])
    return dim % rank == channel_axis(rank, first)


def cat_offset(node: fx.Node, came_from: fx.Node, first: bool | None = None) -> int:
    """Channels that precede `came_from` in the concatenation."""
    tensors, _ = _cat_args(node)
    offset = 0
    for t in tensors:
        if t is came_from:
            return offset
        shape = shape_of(t)
        offset += shape[channel_axis(len(shape), first)]
    return offset


def _broadcast_other(node: fx.Node, came_from: fx.Node, first: bool | None = None) -> bool:
    """x * other / x / other keeps channels when other is a scalar or size 1 on the channel axis
    (shapes aligned from the right, as broadcasting does)."""
    rank = len(shape_of(came_from) or ())
    for other in (a for a in node.args if a is not came_from):
        if not isinstance(other, fx.Node):
            continue
        if node.target is operator.truediv and node.args[0] is not came_from:
            return False
        shape = shape_of(other)
        if shape is None or not shape:
            return False
        aligned = channel_axis(rank, first) - (rank - len(shape)) if rank else len(shape) - 1
        if aligned >= 0 and shape[aligned] != 1:
            return False
    return True


def channel_axis(rank: int, first: bool | None = None) -> int:
    """The channel axis of a tensor of `rank`: 1 when `first` (a convolution's layout), the last when
    not; unknown (None): 1 for rank 4, else the last."""
    if first is None:
        return 1 if rank == 4 else rank - 1
    return 1 if first and rank >= 2 else rank - 1


def shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def keeps_channel_axis(node: fx.Node, first: bool | None = None) -> bool:
    """A reduction (mean/sum/amax) over dimensions other than the channel axis."""
    rank = len(shape_of(node.args[0]) or ())
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if rank == 0 or dims is None:
        return False
    dims = {d % rank for d in ((dims,) if isinstance(dims, int) else dims)}
    return channel_axis(rank, first) not in dims


def _getitem_keeps_channels(node: fx.Node, first: bool | None = None) -> bool:
    """Items of a tuple (a recurrent layer's `(output, state)`), or indexing that leaves the last
    (channel) dimension whole, e.g. `out[:, -1]` or `h_n[-1]`; of a channels-first map, indexing
    that leaves the batch and channel axes whole, e.g. `x[:, :, -1]`."""
    index, shape = node.args[1], shape_of(node.args[0])
    if shape is None:
        return isinstance(index, int)
    if first and len(shape) >= 3:
        whole = slice(None)
        return isinstance(index, tuple) and Ellipsis not in index and index[:2] == (whole, whole)
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


def _flattenable(rank: int, first: bool | None) -> bool:
    """A (B, C) tensor or a channels-first (B, C, h, w) / (B, C, L) map: flattened from dim 1, channel c
    becomes a block of columns (channels-last tensors would interleave)."""
    return rank == 2 or (rank == 4 and first is not False) or (rank == 3 and bool(first))


def _flatten_ok(node: fx.Node, first: bool | None = None) -> bool:
    """Flatten from dim 1 to the end of a map `_flattenable` accepts."""
    if not _flattenable(len(shape_of(node.args[0]) or ()), first):
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
