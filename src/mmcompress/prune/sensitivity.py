"""Per-group pruning ratios from measured sensitivity (`scope: "sensitivity"`).

Layers of one network do not suffer alike from losing units: in MobileNetV2 removing 30% of the
first block's hidden channels moves the logits about eight times as much as removing 30% of a
middle block's (KL 0.079 against 0.010). A uniform ratio spends the budget badly; ranking units of different layers by
their raw scores (`scope: "global"`) compares numbers on different scales.

Here each group is probed: its lowest-scored units are masked (replaced by their calibration mean
at every consumer's input, what mean compensation leaves) at a few ratios, and the model's output
change on the calibration batches is measured (KL for logits, squared error relative to the
output's mean square otherwise; `heads.output_difference`). Each group's change is interpolated
between the probes (quadratic below the first: losing a few units costs little), and removals go
greedily, a step at a time, to the group whose next step changes the output least per unit
removed, until `ratio` of all units of the bucket are gone, no group losing more than its cap.
With `budget: "params"` the same greedy steps count parameters instead (`parameter_count`: each
tensor shrinks with its kept output and input fractions, as slicing shrinks it).
The probes cost two forward passes per group over the probe batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.core.progress import tracked
from mmcompress.prune.channel_importance import keep_count
from mmcompress.prune.compensate import input_width
from mmcompress.prune.dependency import ChannelGroup, eval_mode
from mmcompress.prune.heads import output_difference

STEPS_PER_GROUP = 20  # allocation granularity: a group gives up units in steps of 1/20 of its size


def probe_ratios(ratio: float, cap: float) -> tuple[float, ...]:
    """The ratios each group is probed at: the requested one and the cap (one probe when equal).

    Example:
        >>> probe_ratios(0.3, 0.6)
        (0.3, 0.6)
    """
    return (ratio,) if cap <= ratio else (ratio, cap)


def mask_hook(columns: torch.Tensor, fill: torch.Tensor, channel_dim: int) -> Callable:
    """A forward pre-hook that sets input `columns` (along `channel_dim`) to `fill` (their means)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if not isinstance(x, torch.Tensor):  # a packed sequence: left as it is
            return args
        x = x.movedim(channel_dim, -1).clone()
        x[..., columns] = fill.to(x.dtype)
        return (x.movedim(-1, channel_dim), *args[1:])

    return hook


def consumer_columns(group: ChannelGroup, units: torch.Tensor) -> dict[str, torch.Tensor]:
    """Consumer -> the input columns that carry `units` of the group."""
    found = {}
    for name, repeat, offset in group.consumers:
        cols = (offset + units[:, None] * repeat + torch.arange(repeat)).reshape(-1)
        found[name] = torch.cat([found[name], cols]) if name in found else cols
    return found


def group_sensitivity(
    model: nn.Module,
    modules: dict[str, nn.Module],
    group: ChannelGroup,
    order: torch.Tensor,
    ratios: Sequence[float],
    batches: list,
    references: list,
    means: dict[str, tuple[torch.Tensor, torch.Tensor]],
    round_to: int = 1,
) -> list[float]:
    """The model's output change when the group loses its `order`-first units at each ratio."""
    changes = []
    for ratio in ratios:
        dropped = order[: group.size - keep_count(group.size, ratio, round_to)]
        handles = []
        for name, cols in consumer_columns(group, dropped).items():
            layer = modules[name]
            mean = means.get(name, (None, None))[0]
            fill = torch.zeros(len(cols)) if mean is None else torch.nan_to_num(mean[cols], nan=0.0)
            channel_dim = 1 if isinstance(layer, nn.modules.conv._ConvNd) else -1
            handles.append(layer.register_forward_pre_hook(mask_hook(cols, fill, channel_dim)))
        try:
            change = sum(
                output_difference(ref, call_model(model, b), b) for b, ref in zip(batches, references, strict=True)
            )
        finally:
            for handle in handles:
                handle.remove()
        changes.append(change / len(batches))
    return changes


def interpolated(ratios: Sequence[float], changes: Sequence[float], ratio: float) -> float:
    """The change at `ratio` from the probes: quadratic from 0 to the first, linear after (extrapolated).

    Example:
        >>> interpolated((0.25, 0.5), (1.0, 3.0), 0.125), interpolated((0.25, 0.5), (1.0, 3.0), 0.375)
        (0.25, 2.0)
    """
    if ratio <= ratios[0]:
        return changes[0] * (ratio / ratios[0]) ** 2
    for k in range(1, len(ratios)):
        if ratio <= ratios[k]:
            r0, c0, r1, c1 = ratios[k - 1], changes[k - 1], ratios[k], changes[k]
            return c0 + (c1 - c0) * (ratio - r0) / (r1 - r0)
    if len(ratios) == 1:
        return changes[0] * ratio / ratios[0]
    (r0, c0), (r1, c1) = (ratios[-2], changes[-2]), (ratios[-1], changes[-1])
    return c1 + max(c1 - c0, 0.0) * (ratio - r1) / (r1 - r0)


def allocate(
    curves: list[Callable[[float], float]],
    sizes: list[int],
    ratio: float,
    cap: float,
    round_to: int = 1,
    counted: tuple[Callable[[list[int]], float], float] | None = None,
) -> list[int]:
    """Units each group keeps when `ratio` of all units go, each step to the group whose next step
    costs the least output change per unit (`curves[g](r)`: the change at ratio r of group g).
    `counted` = (amount removed given the units removed per group, the total amount): count
    something else than units, e.g. parameters (`parameter_count`), per step and against the budget.

    Example:
        >>> allocate([lambda r: 10 * r, lambda r: r], [10, 10], 0.3, 0.6)
        [10, 4]
    """
    amount, total = counted or (lambda removed: float(sum(removed)), float(sum(sizes)))
    budget = total * ratio if counted else float(round(total * ratio))
    floors = [max(keep_count(size, cap, round_to), round_to) for size in sizes]
    removed = [0] * len(sizes)
    steps = [max(round_to, round_to * math.ceil(size / STEPS_PER_GROUP / round_to)) for size in sizes]

    def after(g: int, step: int) -> list[int]:
        return [r + step if i == g else r for i, r in enumerate(removed)]

    while amount(removed) < budget - 1e-9:
        best, best_cost, now = None, math.inf, amount(removed)
        for g, size in enumerate(sizes):
            step = min(steps[g], size - floors[g] - removed[g])
            gained = amount(after(g, step)) - now if step > 0 else 0.0
            if gained <= 0:
                continue
            cost = (curves[g]((removed[g] + step) / size) - curves[g](removed[g] / size)) / gained
            if cost < best_cost:
                best, best_cost = g, cost
        if best is None:
            break
        step = min(steps[best], sizes[best] - floors[best] - removed[best])
        while step > 1 and amount(after(best, step - 1)) >= budget - 1e-9:  # no more than the budget needs
            step -= 1
        removed[best] += step
    kept = [size - r for size, r in zip(sizes, removed, strict=True)]
    return [max(floor, int(round(k / round_to)) * round_to) for floor, k in zip(floors, kept, strict=True)]


def parameter_count(groups: list[ChannelGroup], modules: dict[str, nn.Module]) -> tuple[Callable, float]:
    """(parameters removed given the units removed per group, the parameters of every layer the
    groups touch): each parameter tensor shrinks with the fraction of its output units kept (the
    group it belongs to) times the fraction of its input columns kept (the groups it reads), so
    pruning two neighbouring groups is counted once, as slicing does.

    Example:
        >>> removed_of, total = parameter_count([group_a, group_b], modules)
        >>> removed_of([4, 0]) / total
        0.18
    """
    out_group = {name: g for g, group in enumerate(groups) for name in group.members()}
    reads: dict[str, list[tuple[int, float]]] = {}
    for g, group in enumerate(groups):
        for name, repeat, _ in group.consumers:
            reads.setdefault(name, []).append((g, repeat / input_width(modules[name])))
    tensors = []  # (numel, output group or None, [(group, columns per unit / input width)], recurrent square)
    for name in sorted(set(out_group) | set(reads)):
        layer = modules[name]
        depthwise = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1
        for pname, p in layer.named_parameters(recurse=False):
            reads_input = pname.startswith("weight") and p.dim() >= 2 and not depthwise and "_hh" not in pname
            square = isinstance(layer, nn.RNNBase) and pname.startswith("weight_hh")
            tensors.append((p.numel(), out_group.get(name), reads.get(name, []) if reads_input else [], square))
    sizes = [group.size for group in groups]
    total = float(sum(t[0] for t in tensors))

    def removed_of(removed: list[int]) -> float:
        kept = [1 - r / size for r, size in zip(removed, sizes, strict=True)]
        left = 0.0
        for numel, out, ins, square in tensors:
            factor = 1.0 if out is None else kept[out] * (kept[out] if square else 1.0)
            factor *= 1 - sum((1 - kept[g]) * sizes[g] * per_unit for g, per_unit in ins)
            left += numel * factor
        return total - left

    return removed_of, total


def sensitivity_keep(
    model: nn.Module,
    modules: dict[str, nn.Module],
    groups: list[ChannelGroup],
    scores: list[torch.Tensor],
    ratio: float,
    cap: float,
    round_to: int,
    batches: list[Any],
    means: dict[str, tuple[torch.Tensor, torch.Tensor]],
    budget: str = "units",
) -> tuple[list[int], list[list[float]]]:
    """Units each group keeps (see the module docstring) and the measured changes per probe ratio.

    Example:
        >>> keeps, changes = sensitivity_keep(model, modules, groups, scores, 0.3, 0.6, 1, calib[:2], stats)
    """
    ratios = probe_ratios(ratio, cap)
    with torch.no_grad(), eval_mode(model):
        references = [call_model(model, b) for b in batches]
        changes = [
            group_sensitivity(
                model, modules, group, score.argsort(stable=True), ratios, batches, references, means, round_to
            )
            for group, score in tracked(zip(groups, scores, strict=True), "sensitivity probes", len(groups))
        ]
    curves = [lambda r, c=c: interpolated(ratios, c, r) for c in changes]
    counted = parameter_count(groups, modules) if budget == "params" else None
    return allocate(curves, [g.size for g in groups], ratio, cap, round_to, counted), changes
