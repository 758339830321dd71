"""Channel dependency tracking: which layers must shrink together when a layer loses output units.

The model is traced with torch.fx (submodules that cannot be traced, such as Hugging Face
encoders, stay opaque leaves). From each prunable producer (Conv2d, Linear, single-layer LSTM/GRU)
its output is followed through channel-preserving operations (activations, pooling, dropout,
BatchNorm/LayerNorm, depthwise convolutions, spatial means, flatten, concatenation with other
features as in late fusion) to the layers that consume it, whose inputs shrink too. Residual additions couple
producers into one group (they must keep the same units). An output of the model pins its
producer (the input/output contract stays), and so does any other operation on the way (the
reason names the operation; pruning such a layer is an error).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mmcompress.errors import UnsupportedError
from mmcompress.models.feed_forward_specs import SPECS_BY_CLASS
from mmcompress.models.split_attention import SplitMultiheadAttention
from mmcompress.prune.fx_ops import (
    ADD_OPS,
    CONVS,
    NORM_MODULES,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    RECURRENT,
    cat_offset,
    channels_first_after,
    classify,
    flattened_positions,
    is_depthwise,
    prunable,
)

__all__ = ["RECURRENT", "ChannelGroup", "channel_groups", "eval_mode", "trace"]


@dataclass
class ChannelGroup:
    """Layers that keep the same output units.

    Attributes:
        producers: layers whose output units are pruned (same indices for all of them).
        size: number of units.
        norms: normalization layers sliced along with them.
        consumers: (layer, repeat, offset) whose inputs are sliced: unit u is input columns
            offset + u * repeat ... + repeat - 1 (repeat > 1 after a flatten, offset > 0 when
            other features were concatenated in front). Offsets count columns of the model as it
            was traced (before any group of the same call was sliced).
        depthwise: depthwise convolutions on the way; their channels (inputs, outputs, groups)
            shrink with the group.
        pinned: why the group cannot shrink (e.g. it is a model output), or None.
        follows: norm -> the producer or depthwise layer whose output it normalises directly
            (for BatchNorm-aware importance; not part of the record).
    """

    producers: list[str]
    size: int
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int, int]] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    pinned: str | None = None
    follows: dict[str, str] = field(default_factory=dict)

    def members(self) -> list[str]:
        """Every layer whose output units shrink with the group (producers, depthwise, norms)."""
        return [*self.producers, *self.depthwise, *self.norms]

    def to_dict(self) -> dict[str, Any]:
        return {
            "producers": self.producers,
            "norms": self.norms,
            "consumers": self.consumers,
            "depthwise": self.depthwise,
            "size": self.size,
        }


OPAQUE_PACKAGES = {"transformers", "timm", "torchvision", "open_clip", "sentence_transformers"}


class _Tracer(fx.Tracer):
    """Keeps torch.nn layers and modules of model libraries (e.g. transformers) as opaque leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, SplitMultiheadAttention):  # attention as torch.nn's own: its shape checks are branches
            return True
        return super().is_leaf_module(m, qualname) or type(m).__module__.split(".")[0] in OPAQUE_PACKAGES


def is_opaque_leaf(module: nn.Module, name: str) -> bool:
    """Whether the tracer keeps `module` whole (a torch.nn layer or container other than Sequential,
    or a model library's module): the layers inside it never show in the graph."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # never called: its members show in the graph
        return False
    return bool(list(module.children())) and _Tracer().is_leaf_module(module, name)


def library_model(model: nn.Module) -> bool:
    """Whether the model itself is a model library's class (e.g. a transformers model): fx cannot
    trace its forward, and its known feed-forward blocks (`feed_forward_groups`) are all it prunes.

    Example:
        >>> library_model(tiny_model("bert"))
        True
    """
    return type(model).__module__.split(".")[0] in OPAQUE_PACKAGES


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
    args = graph_args(gm, example_inputs)
    with torch.no_grad(), eval_mode(model):
        _ShapeProp(gm).propagate(*args)
    return gm


def graph_args(gm: fx.GraphModule, inputs: Any) -> list:
    """The traced graph's positional inputs from a batch (a tensor, a tuple or a dict by input name);
    inputs the batch leaves out take forward's default values."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    defaults = {n.target: n.args[0] for n in placeholders if n.args}  # forward's default values
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, dict):
        if len(inputs) >= len(placeholders):
            return list(inputs)
        inputs = {n.target: value for n, value in zip(placeholders, inputs, strict=False)}
    missing = [n.target for n in placeholders if n.target not in inputs and n.target not in defaults]
    if missing:
        raise UnsupportedError(f"example inputs lack {missing}, inputs of the traced model")
    return [inputs[n.target] if n.target in inputs else defaults[n.target] for n in placeholders]


class _ShapeProp(ShapeProp):
    """ShapeProp that hands opaque leaf modules plain dicts and lists: fx freezes the containers a
    graph builds (`immutable_dict`), and modules such as sentence-transformers update their inputs."""

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        return super().call_module(target, thawed(args), thawed(kwargs))


def thawed(value: Any) -> Any:
    """Plain dicts, lists and tuples in place of fx's immutable containers (recursively)."""
    if isinstance(value, dict):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thawed(v) for v in value]
    if isinstance(value, tuple):
        return tuple(thawed(v) for v in value)
    return value


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run `model` in eval mode (BatchNorm statistics stay as they are), then restore every module's mode."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def feed_forward_groups(model: nn.Module) -> dict[str, ChannelGroup]:
    """One ChannelGroup per known model-library feed-forward block (`feed_forward_specs.py`): its
    hidden units, produced by the `up` layers and read by `down` alone (blocks the tracer keeps whole).

    Example:
        >>> feed_forward_groups(minilm)["st.0.model.encoder.layer.0.intermediate.dense"].consumers
        [('st.0.model.encoder.layer.0.output.dense', 1, 0)]
    """
    groups = {}
    for name, block in model.named_modules():
        spec = SPECS_BY_CLASS.get(type(block).__name__)
        if spec is None:
            continue
        prefix = f"{name}." if name else ""
        try:
            ups = [block.get_submodule(path) for path in spec.up]
            down = block.get_submodule(spec.down)
        except AttributeError:
            continue
        if not all(type(m) is nn.Linear for m in (*ups, down)):
            continue
        if any(up.out_features != down.in_features for up in ups):
            continue
        producers = [prefix + path for path in spec.up]
        groups[producers[0]] = ChannelGroup(producers, down.in_features, consumers=[(prefix + spec.down, 1, 0)])
    return groups


def channel_groups(model: nn.Module, example_inputs: Any, gm: fx.GraphModule | None = None) -> dict[str, ChannelGroup]:
    """One ChannelGroup per set of coupled producers, keyed by its first producer's name
    (`gm`: the model already traced with `trace`, else it is traced here; a model library's model
    is not traced: its known feed-forward blocks are its groups).

    Example:
        >>> groups = channel_groups(model, {"x": torch.randn(2, 1, 28, 28)})
        >>> groups["features.0"].consumers
        [('features.4', 1, 0)]
    """
    if gm is None and library_model(model):
        return feed_forward_groups(model)
    gm = gm if gm is not None else trace(model, example_inputs)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    producers = [n for n in gm.graph.nodes if n.op == "call_module" and prunable(modules[n.target])]
    parent = {p.target: p.target for p in producers}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    visits: dict[str, ChannelGroup] = {}
    add_sources: dict[fx.Node, list[str]] = {}
    for node in producers:
        visits[node.target] = _follow(node, modules, add_sources)
    for sources in add_sources.values():
        for other in sources[1:]:
            parent[find(other)] = find(sources[0])
    groups: dict[str, ChannelGroup] = {}
    for node in producers:
        seen = visits[node.target]
        group = groups.setdefault(find(node.target), ChannelGroup([], _units(modules[node.target])))
        if node.target in group.producers:
            continue
        group.producers.append(node.target)
        group.norms += [n for n in seen.norms if n not in group.norms]
        group.depthwise += [n for n in seen.depthwise if n not in group.depthwise]
        group.consumers += [c for c in seen.consumers if c not in group.consumers]
        group.follows.update(seen.follows)
        group.pinned = group.pinned or seen.pinned
    traced = set(calls)
    groups.update({k: g for k, g in feed_forward_groups(model).items() if not traced & set(g.producers)})
    for group in groups.values():
        shared = [n for n in [*group.members(), *(c[0] for c in group.consumers)] if calls[n] > 1]
        if shared and not group.pinned:
            group.pinned = f"reaches {shared[0]!r}, which is called more than once (shared weights)"
    return groups


def _units(module: nn.Module) -> int:
    if isinstance(module, CONVS):
        return module.out_channels
    if isinstance(module, RECURRENT):
        return module.hidden_size
    return module.out_features


def _follow(start: fx.Node, modules: dict, add_sources: dict) -> ChannelGroup:
    """Walk forward from a producer; returns what it reaches as a one-producer ChannelGroup."""
    seen = ChannelGroup([start.target], 0)
    weighted = {start.target}  # layers whose output a BatchNorm may follow directly
    first = isinstance(modules[start.target], CONVS)  # channels on axis 1, not the last axis
    # (node, its input, column offset, columns per unit, channels of the input on axis 1)
    stack = [(user, start, 0, 1, first) for user in start.users]
    visited = set()
    while stack:
        node, came_from, offset, repeat, first = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        verdict = classify(node, came_from, modules, start, first)
        onward = [(user, node, offset, repeat, first) for user in node.users]
        if verdict == "ignore":
            continue
        if verdict == "pass":
            positions, after = flattened_positions(node, modules), channels_first_after(node, first)
            stack += [(user, node, offset * positions, repeat * positions, after) for user in node.users]
        elif verdict in ("norm", "depthwise"):
            if offset or repeat != 1:
                what = "normalised" if verdict == "norm" else "filtered depthwise"
                seen.pinned = seen.pinned or f"is {what} together with other features at {node.name}"
                continue
            if verdict == "norm":
                seen.norms.append(node.target)
                if came_from.op == "call_module" and came_from.target in weighted:
                    seen.follows[node.target] = came_from.target
            else:
                seen.depthwise.append(node.target)
                weighted.add(node.target)
            stack += onward
        elif verdict == "add":
            add_sources.setdefault(node, []).append(start.target)
            if offset or any(not _from_producer(arg, modules) for arg in node.args[:2]):
                seen.pinned = seen.pinned or f"is added to a tensor of fixed width at {node.name}"
            stack += onward
        elif verdict == "cat":
            stack += [(user, node, offset + cat_offset(node, came_from, first), repeat, first) for user in node.users]
        elif verdict == "consumer":
            seen.consumers.append((node.target, repeat, offset))
        elif verdict == "output":
            seen.pinned = seen.pinned or "feeds the model output"
        else:  # keep walking the other branches: residual adds further on must still couple producers
            seen.pinned = seen.pinned or f"flows into {verdict} (node {node.name}), which cannot shrink"
    return seen


def _from_producer(node: Any, modules: dict, depth: int = 64) -> bool:
    """Does this tensor come (through channel-preserving ops) from a prunable producer?"""
    while isinstance(node, fx.Node) and depth > 0:
        depth -= 1
        if node.op == "call_module":
            module = modules[node.target]
            if prunable(module):
                return True
            if not (isinstance(module, (*PASS_MODULES, *NORM_MODULES, nn.Flatten)) or is_depthwise(module)):
                return False
        elif node.op == "call_function" and node.target in ADD_OPS:
            return all(_from_producer(a, modules, depth) for a in node.args[:2] if isinstance(a, fx.Node))
        elif not (
            (node.op == "call_function" and node.target in PASS_FUNCTIONS)
            or (node.op == "call_method" and node.target in PASS_METHODS)
        ):
            return False
        node = node.args[0] if node.args else None
    return False
