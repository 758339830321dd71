"""Plan channel pruning: which dependency group each target belongs to, how important each of its
units is, and which units it keeps. Nothing in the model changes here (`structured.apply_plans` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.prune.channel_importance import bn_scale, keep_count, normalised, removed_share, row_norms, top_units
from mmcompress.prune.collect import gradient_stats
from mmcompress.prune.dependency import RECURRENT, ChannelGroup
from mmcompress.prune.fx_ops import conv_refusal
from mmcompress.prune.importance import scores_for
from mmcompress.prune.slicing import GATES


@dataclass
class ChannelPlan:
    """One group to shrink: the units it keeps and why (its scores)."""

    group: ChannelGroup
    keep: torch.Tensor
    ratio: float
    scores: torch.Tensor


def select_groups(
    modules: dict[str, nn.Module], groups: dict[str, ChannelGroup], targets: dict, exact: set[str]
) -> tuple[list[tuple[ChannelGroup, Any]], dict[str, str]]:
    """(group, config) for every targeted group, first target wins; and targets that keep their
    width with the reason. A target named exactly that cannot shrink is an UnsupportedError."""
    by_member = {m: g for g in groups.values() for m in (*g.producers, *g.depthwise)}
    selected: dict[int, tuple[ChannelGroup, Any]] = {}
    kept: dict[str, str] = {}
    for name, cfg in targets.items():
        group = by_member.get(name)
        reason = group.pinned if group is not None else _why_not(modules[name])
        if reason:
            if name in exact:  # named explicitly: the user expects it to shrink
                raise UnsupportedError(
                    f"cannot prune channels of {name!r} ({type(modules[name]).__name__}): it {reason}"
                )
            kept[name] = reason
            continue
        selected.setdefault(id(group), (group, cfg))
    return list(selected.values()), kept


def _why_not(module: nn.Module) -> str:
    refusal = conv_refusal(module)
    if refusal:
        return refusal
    if isinstance(module, RECURRENT):
        return "is a multi-layer, bidirectional or projected recurrent layer"
    return "is not called by the traced forward pass (unused, or inside an opaque library module)"


def plan_channels(model: nn.Module, modules: dict, selected: list, data, loss_fn, max_batches) -> list[ChannelPlan]:
    """Score every selected group and choose the units it keeps (gradients in one pass over `data`)."""
    params = {}
    for group, cfg in selected:
        if cfg.method != "magnitude":
            weighted = (*group.producers, *group.depthwise)
            params.update({f"{p}.{n}": t for p in weighted for n, t in unit_params(modules[p]).items()})
    stats = {}
    if params:
        if data is None or loss_fn is None:
            raise ConfigError("taylor/fisher structured importance needs data= and loss_fn=")
        stats = gradient_stats(model, params, data, loss_fn, max_batches)
    plans = []
    for group, cfg in selected:
        scores = group_scores(group, modules, cfg, stats)
        keep = keep_count(group.size, cfg.ratio, cfg.round_to)
        if keep < 1:
            raise ConfigError(
                f"pruning {cfg.ratio:.0%} of the {group.size} units of {group.producers[0]!r} would remove them all"
            )
        plans.append(ChannelPlan(group, top_units(scores, keep), cfg.ratio, scores))
    return plans


def group_scores(group: ChannelGroup, modules: dict, cfg: Any, stats: dict) -> torch.Tensor:
    """(units,) importance: each weighted layer's unit scores, normalised to mean 1, summed over the group.

    magnitude: L1 of the unit's kernel, times the |gamma| / sqrt(var + eps) of a BatchNorm that
    follows the layer directly when `cfg.bn_aware` (the BN-folded kernel's magnitude).
    """
    followed_by = {layer: norm for norm, layer in group.follows.items()}
    total = torch.zeros(group.size)
    for name in (*group.producers, *group.depthwise):
        score = layer_scores(name, modules[name], cfg.method, stats)
        norm = modules.get(followed_by.get(name, ""))
        if cfg.method == "magnitude" and cfg.bn_aware and isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = bn_scale(norm.weight, norm.running_var, norm.eps)
            score = score * scale if scale is not None else score
        total = total + normalised(score)
    return total


def layer_scores(name: str, module: nn.Module, method: str, stats: dict) -> torch.Tensor:
    """Importance of each output unit of one layer (recurrent: summed over its gates)."""
    total = 0
    for pname, weight in unit_params(module).items():
        if method == "magnitude":
            per_row = row_norms(weight)
        else:
            per_row = scores_for(method, weight, stats.get(f"{name}.{pname}")).reshape(weight.shape[0], -1).sum(1)
        if isinstance(module, RECURRENT):
            per_row = per_row.view(GATES[type(module)], -1).sum(0)
        total = total + per_row
    return total


def unit_params(module: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(module, RECURRENT):
        return {"weight_ih_l0": module.weight_ih_l0, "weight_hh_l0": module.weight_hh_l0}
    return {"weight": module.weight}


def plan_entry(plan: ChannelPlan) -> dict[str, Any]:
    """The record entry of one channel plan (what `replay_structured` reapplies, plus what it cost)."""
    size, kept = plan.group.size, len(plan.keep)
    return {
        "structure": "channels",
        "group": plan.group.to_dict(),
        "keep": plan.keep.tolist(),
        "before": size,
        "kept": kept,
        "ratio": plan.ratio,
        "removed_ratio": 1 - kept / size,
        "score_removed": round(removed_share(plan.scores, plan.keep), 6),
    }
