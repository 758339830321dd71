"""Channel dependency tracking: which layers must shrink together when a layer loses output units.

The model is traced with torch.fx (submodules that cannot be traced, such as Hugging Face
encoders, stay opaque leaves). From each prunable producer (Conv2d, Linear, single-layer LSTM/GRU)
its output is followed through channel-preserving operations (activations, pooling, dropout,
BatchNorm/LayerNorm, spatial means, flatten, concatenation with other features as in late
fusion) to the layers that consume it, whose inputs shrink too. Residual additions couple
producers into one group (they must keep the same units). An output of the model pins its
producer (the input/output contract stays), and so does any other operation on the way (the
reason names the operation; pruning such a layer is an error).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mmcompress.errors import UnsupportedError

PASS_MODULES = (
    nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Dropout, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
)  # fmt: skip
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
PASS_FUNCTIONS = {
    F.relu, F.gelu, F.silu, torch.relu, torch.tanh, torch.sigmoid, F.dropout, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d,
}  # fmt: skip
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
ADD_OPS = {operator.add, torch.add, operator.sub, torch.sub}
RECURRENT = (nn.LSTM, nn.GRU)


@dataclass
class ChannelGroup:
    """Layers that keep the same output units.

    Attributes:
        producers: layers whose output units are pruned (same indices for all of them).
        norms: normalization layers sliced along with them.
        consumers: (layer, repeat, offset) whose inputs are sliced: unit u is input columns
            offset + u * repeat ... + repeat - 1 (repeat > 1 after a flatten, offset > 0 when
            other features were concatenated in front).
        size: number of units.
        pinned: why the group cannot shrink (e.g. it is a model output), or None.
    """

    producers: list[str]
    size: int
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int, int]] = field(default_factory=list)
    pinned: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"producers": self.producers, "norms": self.norms, "consumers": self.consumers, "size": self.size}


OPAQUE_PACKAGES = {"transformers", "timm", "torchvision", "open_clip", "sentence_transformers"}


class _Tracer(fx.Tracer):
    """Keeps torch.nn layers and modules of model libraries (e.g. transformers) as opaque leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or type(m).__module__.split(".")[0] in OPAQUE_PACKAGES


def trace(model: nn.Module, example_inputs: Any) -> fx.GraphModule:
    """fx graph of `model` with shapes recorded from `example_inputs` (a tensor, a tuple of
    positional inputs or a dict of keyword inputs)."""
    try:
        graph = _Tracer().trace(model, concrete_args=None)
    except Exception as err:  # fx raises many types for untraceable code
        raise UnsupportedError(
            f"structured pruning could not trace {type(model).__name__}: {type(err).__name__}: {str(err)[:200]}"
        ) from None
    gm = fx.GraphModule(model, graph)
    order = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        missing = [name for name in order if name not in example_inputs]
        if missing:
            raise UnsupportedError(f"example inputs lack {missing} needed to trace {type(model).__name__}")
        args = [example_inputs[name] for name in order]
    else:
        args = list(example_inputs)
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)
    return gm


def channel_groups(model: nn.Module, example_inputs: Any) -> dict[str, ChannelGroup]:
    """One ChannelGroup per set of coupled producers, keyed by its first producer's name.

    Example:
        >>> groups = channel_groups(model, {"x": torch.randn(2, 1, 28, 28)})
        >>> groups["features.0"].consumers
        [('features.4', 1, 0)]
    """
    gm = trace(model, example_inputs)
    modules = dict(model.named_modules())
    producers = [n for n in gm.graph.nodes if n.op == "call_module" and _prunable(modules[n.target])]
    parent = {p.target: p.target for p in producers}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    visits: dict[str, tuple[list, list, str | None]] = {}
    add_sources: dict[fx.Node, list[str]] = {}
    for node in producers:
        visits[node.target] = _follow(node, modules, add_sources)
    for sources in add_sources.values():
        for other in sources[1:]:
            parent[find(other)] = find(sources[0])
    groups: dict[str, ChannelGroup] = {}
    for node in producers:
        root = find(node.target)
        norms, consumers, pinned = visits[node.target]
        group = groups.setdefault(root, ChannelGroup([], _units(modules[node.target])))
        group.producers.append(node.target)
        group.norms += [n for n in norms if n not in group.norms]
        group.consumers += [c for c in consumers if c not in group.consumers]
        group.pinned = group.pinned or pinned
    return groups


def _prunable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    if isinstance(module, RECURRENT):
        return module.num_layers == 1 and not module.bidirectional
    return isinstance(module, nn.Linear)


def _units(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, RECURRENT):
        return module.hidden_size
    return module.out_features


def _follow(start: fx.Node, modules: dict, add_sources: dict) -> tuple[list, list, str | None]:
    """Walk forward from a producer; returns (norms, consumers, pinned reason)."""
    norms, consumers, pinned = [], [], None
    stack = [(user, start, 0, 1) for user in start.users]  # (node, its input, column offset, columns per unit)
    seen = set()
    while stack:
        node, came_from, offset, repeat = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        verdict = _classify(node, came_from, modules, start)
        if verdict == "ignore":
            continue
        if verdict == "pass":
            repeat *= _flattened_positions(node)
            stack += [(user, node, offset, repeat) for user in node.users]
        elif verdict == "norm":
            if offset:
                return norms, consumers, f"is normalised together with other features at {node.name}"
            norms.append(node.target)
            stack += [(user, node, offset, repeat) for user in node.users]
        elif verdict == "add":
            add_sources.setdefault(node, []).append(start.target)
            if offset or any(not _from_producer(arg, modules) for arg in node.args[:2]):
                pinned = pinned or f"is added to a tensor of fixed width at {node.name}"
            stack += [(user, node, offset, repeat) for user in node.users]
        elif verdict == "cat":
            stack += [(user, node, offset + _cat_offset(node, came_from), repeat) for user in node.users]
        elif verdict == "consumer":
            consumers.append((node.target, repeat, offset))
        elif verdict == "output":
            pinned = pinned or "feeds the model output"
        else:
            return norms, consumers, f"flows into {verdict} (node {node.name}), which cannot shrink"
    return norms, consumers, pinned


def _classify(node: fx.Node, came_from: fx.Node, modules: dict, start: fx.Node) -> str:
    """'pass' | 'norm' | 'add' | 'cat' | 'consumer' | 'output' | 'ignore' | a blocking op's description."""
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, PASS_MODULES):
            return "pass"
        if isinstance(module, NORM_MODULES):
            return "norm"
        if isinstance(module, (nn.Linear, nn.Conv2d, *RECURRENT)) and node.args and node.args[0] is came_from:
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                return f"grouped convolution {node.target!r}"
            return "consumer"
        return f"module {node.target!r} ({type(module).__name__})"
    if node.op == "call_function":
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
        if node.target is operator.getitem and _getitem_keeps_channels(node, start):
            return "pass"
        if node.target in (torch.cat, torch.concat) and _cat_on_channels(node):
            return "cat"
        if node.target is torch.flatten:
            return "pass" if _flatten_ok(node) else "flatten that mixes channels"
        return f"function {getattr(node.target, '__name__', node.target)}"
    if node.op == "call_method":
        if node.target in PASS_METHODS:
            return "pass"
        if node.target in ("mean", "sum", "amax") and _keeps_channel_axis(node):
            return "pass"
        if node.target in ("size", "dim", "to", "type_as") and node.args[0] is came_from:
            return "ignore" if node.target in ("size", "dim") else "pass"
        if node.target == "flatten":
            return "pass" if _flatten_ok(node) else "flatten that mixes channels"
        return f"method .{node.target}()"
    return f"{node.op} {node.target}"


def _from_producer(node: Any, modules: dict, depth: int = 64) -> bool:
    """Does this tensor come (through channel-preserving ops) from a prunable producer?"""
    while isinstance(node, fx.Node) and depth > 0:
        depth -= 1
        if node.op == "call_module":
            module = modules[node.target]
            if _prunable(module):
                return True
            if not isinstance(module, (*PASS_MODULES, *NORM_MODULES)):
                return False
        elif node.op == "call_function" and node.target in ADD_OPS:
            return all(_from_producer(a, modules, depth) for a in node.args[:2] if isinstance(a, fx.Node))
        elif not (node.op == "call_function" and node.target in PASS_FUNCTIONS):
            return False
        node = node.args[0] if node.args else None
    return False


def _cat_args(node: fx.Node) -> tuple[list, int]:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(tensors), dim


def _cat_on_channels(node: fx.Node) -> bool:
    """Concatenation along the channel axis (fusion of features), with known operand widths."""
    tensors, dim = _cat_args(node)
    shapes = [_shape(t) if isinstance(t, fx.Node) else None for t in tensors]
    if any(shape is None for shape in shapes):
        return False
    rank = len(shapes[0])
    return dim % rank == _channel_axis(rank)


def _cat_offset(node: fx.Node, came_from: fx.Node) -> int:
    """Channels that precede `came_from` in the concatenation."""
    tensors, _ = _cat_args(node)
    offset = 0
    for t in tensors:
        if t is came_from:
            return offset
        shape = _shape(t)
        offset += shape[_channel_axis(len(shape))]
    return offset


def _broadcast_other(node: fx.Node, came_from: fx.Node) -> bool:
    """x * other / x / other keeps channels when other is a scalar or size 1 on the channel axis."""
    for other in (a for a in node.args if a is not came_from):
        if not isinstance(other, fx.Node):
            continue
        if node.target is operator.truediv and node.args[0] is not came_from:
            return False
        shape = _shape(other)
        if shape is None or not shape or shape[_channel_axis(len(shape))] != 1:
            return False
    return True


def _channel_axis(rank: int) -> int:
    return 1 if rank == 4 else rank - 1


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _keeps_channel_axis(node: fx.Node) -> bool:
    """A reduction (mean/sum/amax) over dimensions other than the channel axis."""
    rank = _rank(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if rank == 0 or dims is None:
        return False
    dims = {d % rank for d in ((dims,) if isinstance(dims, int) else dims)}
    return _channel_axis(rank) not in dims


def _getitem_keeps_channels(node: fx.Node, start: fx.Node) -> bool:
    """Items of a tuple (a recurrent layer's `(output, state)`), or indexing that leaves the last
    (channel) dimension whole, e.g. `out[:, -1]` or `h_n[-1]`."""
    index, shape = node.args[1], _shape(node.args[0])
    if shape is None:
        return isinstance(index, int)
    if isinstance(index, int):
        return 2 <= len(shape) != 4
    if isinstance(index, slice):
        return len(shape) >= 2
    if isinstance(index, tuple):
        return Ellipsis not in index and (len(index) < len(shape) or index[-1] == slice(None))
    return False


def _rank(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else 0


def _flatten_ok(node: fx.Node) -> bool:
    start_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return start_dim == 1


def _flattened_positions(node: fx.Node) -> int:
    """h*w when `node` flattens a (B, C, h, w) map from dim 1 (each channel becomes h*w columns)."""
    is_flatten = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    )
    shape = _shape(node.args[0]) if is_flatten else None
    if shape is None or len(shape) < 3:
        return 1
    positions = 1
    for size in shape[2:]:
        positions *= int(size)
    return positions
