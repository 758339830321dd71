"""The pruned model and its unpruned copy run side by side over every calibration batch, one node
of the traced graph at a time, so that sequential reconstruction is one pass over the data.

Sequential reconstruction refits each layer on the inputs of the model as already refit before it.
Capturing those inputs with a forward pass per layer costs a pass over the model's prefix for every
layer (quadratic in depth: minutes on MobileNetV2). Here both graphs advance together over all
batches: when a layer to refit is reached, the inputs of every batch are at hand, the layer is refit,
and the pass goes on with the new weights. Memory: the live activations of every batch, twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from mmcompress.core.batches import tensors_in
from mmcompress.core.progress import tracked
from mmcompress.prune.dependency import graph_args, thawed
from mmcompress.prune.stream_target import stream_correction, stream_partners


class _Runner(fx.Interpreter):
    """Runs single nodes against an environment the caller swaps per batch."""

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        return super().call_module(target, thawed(args), thawed(kwargs))


def called_once(gm: fx.GraphModule, names: set[str]) -> bool:
    """Whether every named layer is called by exactly one node with its input as first argument.

    Example:
        >>> called_once(trace(model, x), {"features.4"})
        True
    """
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in names]
    return len(calls) == len(names) and all(n.args and isinstance(n.args[0], fx.Node) for n in calls)


def _corrections(partner: tuple | None, envs: list) -> list[torch.Tensor] | None:
    """Per batch, the stream correction of a layer that ends a residual branch (None if it does not,
    or if the stream is not computed yet or its channels do not match the norm's)."""
    if partner is None:
        return None
    node, scale = partner
    if any(node not in env for side in envs for env in side):
        return None
    pruned, reference = ([env[node] for env in side] for side in envs)
    if not all(isinstance(r, torch.Tensor) and r.dim() >= 2 for r in reference):
        return None
    if scale is not None and any(r.shape[1] != scale.numel() for r in reference):
        return None
    return [stream_correction(r, p, scale) for r, p in zip(reference, pruned, strict=True)]


@torch.no_grad()
def lockstep(
    gm: fx.GraphModule,
    reference: nn.Module,
    batches: list,
    targets: set[str],
    refit: Callable[[str, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None], None],
    held: list[int] | None = None,
) -> None:
    """Run `gm` (the pruned model's graph) and `reference` (an unpruned copy) over `batches` node by
    node; before each target layer runs, call `refit(name, inputs, reference_inputs, corrections)`
    with that layer's input in every batch held (pruned model, unpruned copy) and, for a layer that
    ends a residual branch, the stream correction of its target per batch (`stream_target.py`; else
    None). Both models in eval mode.

    `held[i]`: how many batches are live at graph node i (non-decreasing; default all of them at
    every node). A batch admitted at node i first runs nodes 0..i-1 alone, through the layers as
    already refit, so layers deep in a network, where activations are small, are refit on more
    batches than the memory holds at its widest layers.

    Example:
        >>> lockstep(trace(model, x), copy.deepcopy(model), [x], {"head"}, lambda n, xs, rs, cs: None)
    """
    partners = stream_partners(gm, targets)
    walk = _Walk(gm, [_Runner(gm), _Runner(fx.GraphModule(reference, gm.graph))])

    def before(node: fx.Node) -> None:
        if node.op == "call_module" and node.target in targets:
            source = node.args[0]
            inputs, reference_inputs = [env[source] for env in walk.envs[0]], [env[source] for env in walk.envs[1]]
            refit(node.target, inputs, reference_inputs, _corrections(partners.get(node.target), walk.envs))

    label = f"sequential refit ({len(targets)} layers, {len(batches)} batches)"
    walk.run([graph_args(gm, batch) for batch in batches], held, before, label=label)


@torch.no_grad()
def live_profile(gm: fx.GraphModule, batch: Any) -> list[int]:
    """Per graph node, the bytes of activations one batch keeps alive while that node runs (what
    `lockstep` holds per batch and model there: the node's inputs and output included).

    Example:
        >>> max(live_profile(trace(model, x), x))
        1048576
    """
    walk = _Walk(gm, [_Runner(gm)])
    profile: list[int] = []

    def after(node: fx.Node) -> None:
        env = walk.envs[0][0]
        profile.append(sum(t.nbytes for value in env.values() for _, t in tensors_in(value)))

    walk.run([graph_args(gm, batch)], None, after=after)
    return profile


def live_bytes(gm: fx.GraphModule, batch: Any) -> int:
    """The most bytes of activations one batch keeps alive while `gm` runs node by node.

    Example:
        >>> live_bytes(trace(model, x), x)
        1048576
    """
    return max(live_profile(gm, batch), default=0)


class _Walk:
    """Runners advanced node by node over their environments (one per batch and runner); values no
    later node reads are freed as soon as the last reader ran."""

    def __init__(self, gm: fx.GraphModule, runners: list) -> None:
        self.nodes = [node for node in gm.graph.nodes if node.op != "output"]
        self.last_use = {arg: i for i, node in enumerate(self.nodes) for arg in node.all_input_nodes}
        self.slots = {node: k for k, node in enumerate(n for n in self.nodes if n.op == "placeholder")}
        self.runners = runners
        self.envs: list[list[dict]] = [[] for _ in runners]
        self.args: list = []

    def run(self, args: list, held: list[int] | None, before=None, after=None, label=None) -> None:
        """Walk every node, calling `before(node)` ahead of it and `after(node)` once it ran in every
        environment; `held[i]` batches of `args` are live at node i (default all)."""
        indices = range(len(self.nodes))
        for i in tracked(indices, label) if label else indices:
            while len(self.args) < min(len(args), held[i] if held is not None else len(args)):
                self._admit(args[len(self.args)], i)
            if before is not None:
                before(self.nodes[i])
            everywhere = range(len(self.args))
            self._step(i, everywhere)
            if after is not None:
                after(self.nodes[i])
            self._free(i, everywhere)

    def _admit(self, values: Any, upto: int) -> None:
        """A new batch, run alone through nodes 0..upto-1."""
        self.args.append(values)
        for side in self.envs:
            side.append({})
        for i in range(upto):
            self._step(i, [len(self.args) - 1])
            self._free(i, [len(self.args) - 1])

    def _step(self, i: int, batches) -> None:
        node = self.nodes[i]
        for runner, side in zip(self.runners, self.envs, strict=True):
            for b in batches:
                runner.env = env = side[b]
                env[node] = self.args[b][self.slots[node]] if node.op == "placeholder" else runner.run_node(node)

    def _free(self, i: int, batches) -> None:
        """Drop the values whose last reader is node i."""
        for arg in self.nodes[i].all_input_nodes:  # free what no later node reads
            if self.last_use[arg] == i:
                for side in self.envs:
                    for b in batches:
                        side[b].pop(arg, None)
