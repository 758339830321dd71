"""Plan channel pruning: which dependency group each target belongs to, how important each of its
units is, and which units it keeps. Nothing in the model changes here (`structured.apply_plans` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmcompress.core.layer_stats import gradient_stats
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.prune.channel_importance import (
    bn_scale,
    cap_ratio,
    global_keep,
    greedy_removal_scores,
    keep_count,
    normalised,
    removed_share,
    row_norms,
    top_units,
)
from mmcompress.prune.dependency import RECURRENT, ChannelGroup, is_opaque_leaf
from mmcompress.prune.fx_ops import conv_refusal
from mmcompress.prune.importance import scores_for
from mmcompress.prune.reconstruct import reconstructable
from mmcompress.prune.sensitivity import sensitivity_keep
from mmcompress.prune.slicing import GATES


@dataclass
class ChannelPlan:
    """One group to shrink: the units it keeps and why (its scores)."""

    group: ChannelGroup
    keep: torch.Tensor
    ratio: float
    scores: torch.Tensor
    config: Any = None
    sensitivity: list[float] | None = None  # scope "sensitivity": output change at each probe ratio


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
        reason = group.pinned if group is not None else _why_not(modules[name], _enclosing_leaf(name, modules))
        if reason:
            if name in exact:  # named explicitly: the user expects it to shrink
                raise UnsupportedError(
                    f"cannot prune channels of {name!r} ({type(modules[name]).__name__}): it {reason}"
                )
            kept[name] = reason
            continue
        selected.setdefault(id(group), (group, cfg))
    return list(selected.values()), kept


def _why_not(module: nn.Module, container: str | None = None) -> str:
    refusal = conv_refusal(module)
    if refusal:
        return refusal
    if isinstance(module, RECURRENT):
        return "is a multi-layer, bidirectional or projected recurrent layer"
    if container and "MultiheadAttention" in container:  # its projections' widths are heads
        return f"is inside {container}, whose widths are its heads (prune them with unit: heads)"
    if container:  # e.g. a model library's block: one opaque call whose inner Linear layers fx cannot see
        return f"is inside {container}, which the tracer keeps whole (a torch.nn or model-library module)"
    return "is not called by the traced forward pass (unused, or inside an opaque library module)"


def _enclosing_leaf(name: str, modules: dict) -> str | None:
    """'text.layers.0 (TransformerEncoderLayer)' when `name` sits inside a torch.nn container module
    or a model library's module (the tracer's opaque leaves), else None."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        module = modules.get(parent)
        if module is None:
            continue
        if is_opaque_leaf(module, parent):
            return f"{parent!r} ({type(module).__name__})"
    return None


def plan_channels(
    model: nn.Module,
    modules: dict,
    selected: list,
    data,
    loss_fn,
    max_batches,
    inputs: dict | None = None,
    grams: dict | None = None,
    norm_after: dict | None = None,
    calib: list | None = None,
) -> list[ChannelPlan]:
    """Score every selected group and choose the units it keeps (gradients in one pass over `data`;
    `inputs`: consumer -> its input (mean, var) per column, for the "variance" method; `grams`:
    consumer -> E[z z^T] of its input columns and 1, and `norm_after`: layer -> the BatchNorm after
    it, for "reconstruction")."""
    params = {}
    for group, cfg in selected:
        if cfg.method in ("taylor", "fisher"):
            weighted = (*group.producers, *group.depthwise)
            params.update({f"{p}.{n}": t for p in weighted for n, t in unit_params(modules[p]).items()})
    stats = {}
    if params:
        if data is None or loss_fn is None:
            raise ConfigError("taylor/fisher structured importance needs data= and loss_fn=")
        stats = gradient_stats(model, params, data, loss_fn, max_batches)
    found = (inputs or {}, stats, grams or {}, norm_after or {})
    scores = [_scores(group, cfg, modules, *found) for group, cfg in selected]
    keeps = [keep_count(group.size, cfg.ratio, cfg.round_to) for group, cfg in selected]
    buckets: dict[Any, list[int]] = {}
    for i, (_, cfg) in enumerate(selected):
        if cfg.scope in ("global", "sensitivity"):
            buckets.setdefault(cfg, []).append(i)
    measured: dict[int, list[float]] = {}
    for cfg, members in buckets.items():
        sizes = [selected[i][0].size for i in members]
        if cfg.scope == "sensitivity":
            probes = (calib or [])[: cfg.ablation_batches or max_batches or len(calib or [])]
            groups = [selected[i][0] for i in members]
            found, changes = sensitivity_keep(
                model, modules, groups, [scores[i] for i in members], cfg.ratio, cap_ratio(cfg), cfg.round_to,
                probes, inputs or {}, cfg.budget,
            )  # fmt: skip
            measured.update(zip(members, changes, strict=True))
        else:
            found = global_keep(
                [normalised(scores[i]) for i in members], sizes, cfg.ratio, cap_ratio(cfg), cfg.round_to
            )
        for i, keep in zip(members, found, strict=True):
            keeps[i] = keep
    plans = []
    for (group, cfg), score, keep in zip(selected, scores, keeps, strict=True):
        if keep < 1:
            raise ConfigError(
                f"pruning {cfg.ratio:.0%} of the {group.size} units of {group.producers[0]!r} would remove them all"
            )
        plans.append(ChannelPlan(group, top_units(score, keep), cfg.ratio, score, cfg, measured.get(len(plans))))
    return plans


def _scores(group, cfg, modules, inputs, stats, grams, norm_after) -> torch.Tensor:
    if cfg.method == "reconstruction":
        steps = group.size - keep_count(group.size, max(cfg.ratio, cap_ratio(cfg) if cfg.scope != "layer" else 0))
        found = reconstruction_scores(group, modules, grams, norm_after, steps)
        if found is not None:
            return found
    if cfg.method in ("variance", "auto", "reconstruction"):  # reconstruction: a consumer it cannot refit
        return variance_scores(group, modules, inputs, cfg.compensate)
    return group_scores(group, modules, cfg, stats)


def reconstruction_scores(
    group: ChannelGroup, modules: dict, grams: dict, norm_after: dict, steps: int
) -> torch.Tensor | None:
    """(units,) greedy OBS removal order over the group's consumers (`greedy_removal_scores`): the
    output error their least-squares refit cannot take back, each output weighted by the
    BatchNorm after the consumer. None when a consumer is not a Linear / ungrouped Conv2d.

    Example:
        >>> grams = input_grams(model, {"fc2": model.fc2}, calib)
        >>> reconstruction_scores(groups["fc1"], dict(model.named_modules()), grams, {}, steps=4).shape
        torch.Size([12])
    """
    weights, hessians, columns = [], [], []
    for name, repeat, offset in group.consumers:
        layer = modules[name]
        if not reconstructable(layer) or name not in grams:
            return None
        taps = layer.weight[0, 0].numel() if isinstance(layer, (nn.Conv1d, nn.Conv2d)) else 1
        w = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
        norm = modules.get(norm_after.get(name, ""))
        if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = bn_scale(norm.weight, norm.running_var, norm.eps)
            w = w * scale[:, None] if scale is not None else w
        channels = offset + torch.arange(group.size)[:, None] * repeat + torch.arange(repeat)  # (units, repeat)
        columns.append((channels[..., None] * taps + torch.arange(taps)).reshape(group.size, -1))
        weights.append(torch.cat([w, torch.zeros(w.shape[0], 1)], 1))
        hessians.append(grams[name])
    return greedy_removal_scores(weights, hessians, columns, steps) if weights else None


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


def variance_scores(group: ChannelGroup, modules: dict, inputs: dict, compensated: bool) -> torch.Tensor:
    """(units,) share of its consumers' output variance each unit carries, summed over consumers.

    A consumer y = W x loses sum_c W[o, c]^2 Var(x_c) of output o's variance (inputs taken as
    independent; with compensation the mean is kept, else E[x_c^2] is lost); each output's loss is
    a fraction of its total, averaged over the outputs, so units of different groups compare.
    """
    total = torch.zeros(group.size)
    for name, repeat, offset in group.consumers:
        layer = modules[name]
        w = (layer.weight_ih_l0 if isinstance(layer, RECURRENT) else layer.weight).detach().float()
        w2 = (w * w).reshape(w.shape[0], w.shape[1], -1).sum(2)  # (out, in)
        mean, var = inputs[name]
        power = var if compensated else var + mean * mean
        power = torch.nan_to_num(power, nan=float(power.nanmean()) if power.isfinite().any() else 1.0)
        share = w2 * power[None]  # (out, in)
        share = share / share.sum(1, keepdim=True).clamp_min(1e-30)
        per_column = share.mean(0)  # (in,)
        total += per_column[offset : offset + group.size * repeat].view(group.size, repeat).sum(1)
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


def plan_entry(plan: ChannelPlan, folded: dict[str, str] | None = None, refit: Iterable[str] = ()) -> dict[str, Any]:
    """The record entry of one channel plan (what `replay_structured` reapplies, plus what it cost);
    `folded`: consumer -> where its compensation (bias change) went; `refit`: consumers whose
    weights were refit by least squares (`reconstruct`), listed under "reconstructed"."""
    size, kept = plan.group.size, len(plan.keep)
    consumers = {c[0] for c in plan.group.consumers}
    compensation = {c: where for c, where in (folded or {}).items() if c in consumers}
    reconstructed = sorted(consumers & set(refit))
    return {
        "structure": "channels",
        "group": plan.group.to_dict(),
        "keep": plan.keep.tolist(),
        "before": size,
        "kept": kept,
        "ratio": plan.ratio,
        "removed_ratio": 1 - kept / size,
        "score_removed": round(removed_share(plan.scores, plan.keep), 6),
        **({"compensation": compensation} if compensation else {}),
        **({"reconstructed": reconstructed} if reconstructed else {}),
        **({"scope": scope} if (scope := getattr(plan.config, "scope", "layer")) != "layer" else {}),
        **({"sensitivity": [round(c, 6) for c in plan.sensitivity]} if plan.sensitivity else {}),
    }
