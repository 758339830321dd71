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
) -> None:
    """Run `gm` (the pruned model's graph) and `reference` (an unpruned copy) over all `batches`
    node by node; before each target layer runs, call `refit(name, inputs, reference_inputs,
    corrections)` with that layer's input in every batch (pruned model, unpruned copy) and, for a
    layer that ends a residual branch, the stream correction of its target per batch
    (`stream_target.py`; else None). Both models in eval mode.

    Example:
        >>> lockstep(trace(model, x), copy.deepcopy(model), [x], {"head"}, lambda n, xs, rs, cs: None)
    """
    partners = stream_partners(gm, targets)
    runners = [_Runner(gm), _Runner(fx.GraphModule(reference, gm.graph))]
    envs = [[{} for _ in batches] for _ in runners]

    def before(node: fx.Node) -> None:
        if node.op == "call_module" and node.target in targets:
            source = node.args[0]
            inputs, reference_inputs = [env[source] for env in envs[0]], [env[source] for env in envs[1]]
            refit(node.target, inputs, reference_inputs, _corrections(partners.get(node.target), envs))

    label = f"sequential refit ({len(targets)} layers, {len(batches)} batches)"
    _walk(gm, runners, envs, [graph_args(gm, batch) for batch in batches], before, label=label)


@torch.no_grad()
def live_bytes(gm: fx.GraphModule, batch: Any) -> int:
    """The most bytes of activations one batch keeps alive while `gm` runs node by node (what
    `lockstep` holds per batch and model; the inputs and outputs of the node running included).

    Example:
        >>> live_bytes(trace(model, x), x)
        1048576
    """
    peak = 0

    def after(env: dict) -> None:
        nonlocal peak
        peak = max(peak, sum(t.nbytes for value in env.values() for _, t in tensors_in(value)))

    env: dict = {}
    _walk(gm, [_Runner(gm)], [[env]], [graph_args(gm, batch)], after=lambda node: after(env))
    return peak


def _walk(gm: fx.GraphModule, runners: list, envs: list, args: list, before=None, after=None, label=None) -> None:
    """Advance every runner over its environments (one per batch) node by node, calling `before(node)`
    ahead of each node and `after(node)` once it ran everywhere; values no later node reads are freed
    after that."""
    nodes = list(gm.graph.nodes)
    last_use = {arg: i for i, node in enumerate(nodes) for arg in node.all_input_nodes}
    placeholder = 0
    for i, node in enumerate(tracked(nodes, label) if label else nodes):
        if node.op == "output":
            break
        if before is not None:
            before(node)
        for runner, side in zip(runners, envs, strict=True):
            for env, values in zip(side, args, strict=True):
                runner.env = env
                env[node] = values[placeholder] if node.op == "placeholder" else runner.run_node(node)
        placeholder += node.op == "placeholder"
        if after is not None:
            after(node)
        for arg in node.all_input_nodes:  # free what no later node reads
            if last_use[arg] == i:
                for side in envs:
                    for env in side:
                        env.pop(arg, None)
