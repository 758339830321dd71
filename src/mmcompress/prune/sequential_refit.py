"""Sequential least-squares refit of the layers around removed channels, in one lockstep pass.

Each layer is refit, in the order the traced graph computes, on the pruned model's inputs (as
already refit before it) against the unpruned copy's output of that layer (He et al. 2017;
`reconstruct.refit_to_reference` is the math); a layer that ends a residual branch is aimed at the
unpruned block output minus the pruned model's own stream instead (`stream_target.py`). Consumers
lose the columns of removed channels. `refit_layer` also solves grouped convolutions (one small
regression per group) for layers that lose no columns. Refitting the producers and depthwise
convolutions of MobileNetV2's pruned blocks against their unpruned outputs too (512 crops) did not
help: top-1 agreement 0.770 / KL 0.123 against 0.787 / 0.123 for the consumers alone with layer
targets, 0.787 / 0.117 against 0.783 / 0.117 with residual-stream targets.

Memory: the lockstep pass holds every batch's live activations twice. When the calibration batches
would not fit in `memory_budget()` at the model's widest activations, the pass starts with as many
as fit there and admits more as the activations narrow (`held_per_node`: a batch admitted at a node
first runs the layers before it, as already refit), so a CNN's deep layers, whose maps are small,
are refit on far more images than its first ones: MobileNetV2 at 10 GB holds 16 batches of 32
crops at its 112x112 layers and all 128 from its 14x14 stage on. The layers the pass ends on (no
other refit layer after them: typically a classifier after global pooling, which sees one row per
image and needs the most images) are refit on every batch, streamed one at a time, if even there
not all of them fit.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import fx, nn

from mmcompress.prune.dependency import eval_mode
from mmcompress.prune.lockstep import live_profile, lockstep
from mmcompress.prune.reconstruct import paired_inputs, refit_layer

BUDGET_SHARE = 0.6  # of the memory available when the refit starts
BUDGET_VARIABLE = "MMCOMPRESS_REFIT_MEMORY_GB"  # overrides the budget


@torch.no_grad()
def refit_in_lockstep(
    model: nn.Module, graph: fx.GraphModule, layers: dict[str, list[int]], batches: list, damp: float, shift
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Refit `layers` (name -> removed input channels) in graph order in one pass over `batches`;
    `shift(delta)` makes the forward hook that adds a refit layer's bias change while the pass goes
    on. Returns name -> bias change, and the layers that saw fewer rows than they keep columns.

    Example:
        >>> deltas, scarce = refit_in_lockstep(model, trace(model, x), {"head": [1]}, [x], 0.01, shift)
    """
    modules = dict(model.named_modules())
    deltas, scarce, hooks = {}, [], []

    def refit(name: str, pairs, corrections: list | None = None) -> None:
        layer = modules[name]
        deltas[name], rows, columns = refit_layer(layer, layers[name], pairs, damp, corrections)
        hooks.append(layer.register_forward_hook(shift(deltas[name])))
        if rows <= columns:
            scarce.append(f"{name} ({rows} rows, {columns} columns)")

    reference = copy.deepcopy(model)  # the unpruned model: every layer's target output
    ref_modules = dict(reference.named_modules())
    try:
        with eval_mode(model), eval_mode(reference):
            held = held_per_node(graph, batches)
            at = {node.target: i for i, node in enumerate(n for n in graph.graph.nodes if n.op != "output")}
            streamed = [name for name in last_layers(graph, set(layers)) if held[at[name]] < len(batches)]
            lockstep(
                graph, reference, batches, set(layers) - set(streamed),
                lambda name, xs, refs, corrections: refit(name, zip(xs, refs, strict=True), corrections),
                held,
            )  # fmt: skip
            for name in streamed:
                refit(name, _streamed_pairs(model, reference, modules[name], ref_modules[name], batches))
    finally:
        for hook in hooks:
            hook.remove()
    return deltas, scarce


def _streamed_pairs(model: nn.Module, reference: nn.Module, layer: nn.Module, ref_layer: nn.Module, batches: list):
    """(the layer's input in the pruned model, in the unpruned copy), one batch at a time."""
    for batch in batches:
        (x,), (x_ref,) = paired_inputs(model, reference, layer, ref_layer, [batch], stop_early=True)
        yield x, x_ref


def last_layers(graph: fx.GraphModule, names: set[str]) -> list[str]:
    """The named layers, in graph order, whose output reaches no other named layer.

    Example:
        >>> last_layers(trace(model, x), {"features.3.conv.2", "classifier.1"})
        ['classifier.1']
    """
    calls = [n for n in graph.graph.nodes if n.op == "call_module" and n.target in names]
    found = []
    for node in calls:
        seen, todo = set(), list(node.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            todo.extend(user.users)
        if not any(other in seen for other in calls):
            found.append(node.target)
    return found


def memory_budget() -> int:
    """Bytes the lockstep pass may hold: BUDGET_SHARE of the memory available now (Linux's
    MemAvailable), or MMCOMPRESS_REFIT_MEMORY_GB gigabytes when that is set.

    Example:
        >>> memory_budget() > 0
        True
    """
    if os.environ.get(BUDGET_VARIABLE):
        return int(float(os.environ[BUDGET_VARIABLE]) * 1e9)
    try:
        with open("/proc/meminfo") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(BUDGET_SHARE * available)


def held_per_node(graph: fx.GraphModule, batches: list) -> list[int]:
    """Per graph node, how many of `batches` the lockstep pass holds there (at least one): as many as
    fit in `memory_budget()` at that node and every later one (live bytes measured on the first
    batch); warns when the first nodes cannot hold them all.

    Example:
        >>> held_per_node(trace(model, x), [x] * 4)[-1]
        4
    """
    profile = [2 * size for size in live_profile(graph, batches[0])]  # the pruned model and the unpruned copy
    budget = memory_budget()
    held, widest = [], 0
    for size in reversed(profile):  # a batch admitted at a node stays live to the end
        widest = max(widest, size)
        held.append(max(1, min(len(batches), budget // max(widest, 1))))
    held.reverse()
    if held and held[0] < len(batches):
        nodes = [n for n in graph.graph.nodes if n.op != "output"]
        full = next((nodes[i] for i, count in enumerate(held) if count == len(batches)), None)
        where = "no layer" if full is None else f"from {full.target if full.op == 'call_module' else full.name} on"
        warnings.warn(
            f"reconstruct: the sequential refit holds every calibration batch's activations (about "
            f"{max(profile) / 1e9:.2f} GB per batch at the widest layer, {len(batches) * max(profile) / 1e9:.1f} GB "
            f"for {len(batches)}; budget {budget / 1e9:.1f} GB, set {BUDGET_VARIABLE} to change it): it refits the "
            f"first layers on the first {held[0]} batches, more where activations narrow ({where} on all of "
            "them), and the layers it ends on on all of them",
            stacklevel=5,
        )
    return held
