"""Mean compensation for removed channels: what a removed unit fed its consumer on average stays.

A consumer y = W x + b that loses input columns D loses W[:, D] x_D; replacing x_D by its expected
value mu_D keeps y's mean: y ~ W[:, keep] x_keep + (b + W[:, D] mu_D). The constant goes into the
consumer's bias, or, when it has none and a BatchNorm follows it directly, into that BatchNorm's
running mean (BN(y + d) with running mean m equals BN(y) with running mean m - d). A consumer with
neither gets a bias (the record lists it, so a replay creates it too).

The means come from calibration batches (measured at each consumer's input) or, without data,
from the BatchNorm statistics propagated through the graph (`mean_flow.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from mmcompress.core.walker import run_calibration
from mmcompress.errors import ConfigError, DataError
from mmcompress.prune.dependency import RECURRENT, ChannelGroup, eval_mode
from mmcompress.prune.lockstep import called_once
from mmcompress.prune.mean_flow import Stats, channel_means
from mmcompress.prune.reconstruct import (
    DAMP,
    calibration_batches,
    reconstruct_consumers,
    reconstructable,
    shift_output,
    warn_scarce,
)
from mmcompress.prune.sequential_refit import refit_in_lockstep
from mmcompress.prune.slicing import dropped_columns


def consumers_of(plans: Iterable[tuple[ChannelGroup, torch.Tensor]]) -> dict[str, list[int]]:
    """Consumer layer -> its input columns that carry removed units (over every group of one call).

    Example:
        >>> consumers_of([(group, torch.tensor([0, 2]))])
        {'features.4': [1, 3]}
    """
    drops: dict[str, set[int]] = {}
    for group, keep in plans:
        keep = torch.as_tensor(keep, dtype=torch.long)
        for name, repeat, offset in group.consumers:
            drops.setdefault(name, set()).update(dropped_columns(group.size, keep, repeat, offset))
    return {name: sorted(cols) for name, cols in drops.items() if cols}


def graph_input_stats(gm: fx.GraphModule, modules: dict[str, nn.Module], names: Iterable[str]) -> dict[str, Stats]:
    """Data-free expected input of each named layer and its variance, (in_features,) each, NaN where unknown.

    Example:
        >>> mean, var = graph_input_stats(trace(model, x), dict(model.named_modules()), ["features.3"])["features.3"]
    """
    stats = channel_means(gm, modules)
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    found = {}
    for name in names:
        width = input_width(modules[name])
        source = nodes[name].args[0] if name in nodes and nodes[name].args else None
        got = stats.get(source) if isinstance(source, fx.Node) else None
        unknown = torch.full((width,), torch.nan)
        found[name] = (got[0].clone(), got[1].clone()) if got and got[0].shape == (width,) else (unknown, unknown)
    return found


def measured_input_stats(
    model: nn.Module, layers: dict[str, nn.Module], calib: Iterable[Any], max_batches: int | None = None
) -> dict[str, Stats]:
    """Mean and variance of each layer's input per input column over calibration batches (eval mode).

    Example:
        >>> mean, var = measured_input_stats(model, {"head": model.head}, [x])["head"]
    """
    sums = {name: torch.zeros(2, input_width(layer), dtype=torch.float64) for name, layer in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def collect(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):  # a packed sequence: no column means to take
            return
        x = x.double()
        conv = isinstance(layer, (nn.Conv1d, nn.Conv2d))
        rows = x.movedim(1, -1).reshape(-1, x.shape[1]) if conv else x.reshape(-1, x.shape[-1])
        sums[name] += torch.stack([rows.sum(0), (rows * rows).sum(0)])  # (2, in)
        counts[name] += rows.shape[0]

    with eval_mode(model):  # every module's own mode comes back (run_calibration restores only the root's)
        used = run_calibration(model, layers, calib, collect, max_batches=max_batches)
    if used == 0:
        raise DataError("structured pruning got no calibration batches; pass calib=[...] or none at all")
    found = {}
    for name in layers:
        first, second = sums[name] / max(counts[name], 1)
        found[name] = (first.float(), (second - first * first).clamp_min(0).float())
    return found


def input_stats_of(model, modules, graph, names, calib, max_batches) -> dict[str, Stats]:
    """Consumers' input statistics: measured on `calib` when given, else data-free from the graph."""
    layers = {name: modules[name] for name in names}
    if calib is not None:
        return measured_input_stats(model, layers, calib, max_batches)
    if graph is None:  # an untraced model library's model: unknown, no compensation without data
        return {name: (torch.full((input_width(m),), torch.nan),) * 2 for name, m in layers.items()}
    return graph_input_stats(graph, modules, layers)


def fold_means(
    modules: dict[str, nn.Module],
    dropped: dict[str, list[int]],
    means: dict[str, torch.Tensor],
    norm_after: dict[str, str],
) -> dict[str, str]:
    """Add W[:, D] @ mean[D] of each consumer to its bias (or the following BatchNorm's running mean,
    or a new bias). Returns consumer -> where the constant went ("bias", "norm:<name>", "new bias").

    Example:
        >>> fold_means(modules, {"head": [1]}, {"head": torch.tensor([0.0, 2.0])}, {})
        {'head': 'bias'}
    """
    where = {}
    with torch.no_grad():
        for name, cols in dropped.items():
            layer = modules[name]
            mu = torch.nan_to_num(means[name][cols], nan=0.0)  # unknown: no compensation
            if not bool(mu.any()):
                continue
            delta = compensation(_in_weight(layer), torch.tensor(cols), mu)  # (out,)
            where[name] = fold_bias_change(name, layer, delta, modules, norm_after)
    return where


def compensation(weight: torch.Tensor, cols: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """W[:, D] @ mu_D, a conv kernel summed over its taps: (out, in[, kh, kw]), (d,), (d,) -> (out,).

    Example:
        >>> compensation(torch.ones(2, 3, 1, 1), torch.tensor([0, 2]), torch.tensor([1.0, 2.0]))
        tensor([3., 3.])
    """
    w = weight.detach().float().reshape(weight.shape[0], weight.shape[1], -1).sum(2)  # (out, in)
    return w[:, cols] @ mu.float()


def norms_after(groups: dict[str, ChannelGroup]) -> dict[str, str]:
    """Layer -> the BatchNorm that normalises its output directly, over every traced group."""
    return {layer: norm for g in groups.values() for norm, layer in g.follows.items()}


def fold_bias_change(name: str, layer: nn.Module, delta: torch.Tensor, modules: dict, norm_after: dict) -> str:
    """Add `delta` (out,) to the layer's output: into its bias, else the running mean of the
    BatchNorm after it (`norm_after`), else a new bias. Returns where it went ("bias",
    "norm:<name>", "new bias"; a replay recreates a new bias).

    Example:
        >>> fold_bias_change("head", model.head, torch.zeros(10), modules, {})
        'bias'
    """
    if isinstance(layer, RECURRENT):
        if not layer.bias:
            return "none (recurrent layer without bias)"
        layer.bias_ih_l0 += delta.to(layer.bias_ih_l0.dtype)
        return "bias"
    if layer.bias is not None:
        layer.bias += delta.to(layer.bias.dtype)
        return "bias"
    norm = modules.get(norm_after.get(name, ""))
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.running_mean is not None:
        norm.running_mean -= delta.to(norm.running_mean.dtype)
        return f"norm:{norm_after[name]}"
    layer.bias = nn.Parameter(delta.to(layer.weight.dtype).clone())
    return "new bias"


def add_biases(modules: dict[str, nn.Module], names: Iterable[str]) -> None:
    """Give each named layer a zero bias (a replay recreates the biases compensation added)."""
    for name in names:
        layer = modules[name]
        if getattr(layer, "bias", None) is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))


def _in_weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight_ih_l0 if isinstance(layer, RECURRENT) else layer.weight


def input_width(layer: nn.Module) -> int:
    """Input columns (features, channels) a consumer reads."""
    if isinstance(layer, RECURRENT):
        return layer.input_size
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.in_channels
    return layer.weight.shape[1]


def compensate_plans(
    modules, groups, plans, stats: dict[str, Stats], model=None, calib=None, max_batches=None, graph=None
):
    """Fold the mean of every removed unit of the plans that ask for it into its consumers (before
    any slicing), `stats` holding each consumer's input (mean, var); plans with `reconstruct` first
    refit their Linear / Conv1d / Conv2d consumers by least squares on `calib` (`sequential_refit.py`, in one
    lockstep pass over the traced `graph`; without it `reconstruct.py`'s pass per layer; the bias
    change is folded the same way). Returns consumer -> where the constant went, and the consumers
    that were refit."""
    norm_after = norms_after(groups)
    refit = consumers_of((p.group, p.keep) for p in plans if getattr(p.config, "reconstruct", False))
    where, refit_names = {}, set()
    if refit:
        if calib is None:
            raise ConfigError("reconstruct refits consumers on calibration data: pass calib=[...]")
        deltas = _refit(model, modules, refit, calib, max_batches, graph)
        skipped = sorted(set(refit) - set(deltas))
        if skipped:
            warnings.warn(
                f"reconstruct refits nn.Linear and ungrouped, zero-padded Conv1d/Conv2d layers only; {len(skipped)} "
                f"layer(s) reading removed channels keep mean compensation instead: {', '.join(skipped[:5])}",
                stacklevel=3,
            )
        with torch.no_grad():
            for name, delta in deltas.items():
                where[name] = fold_bias_change(name, modules[name], delta, modules, norm_after)
        refit_names = set(deltas)
    dropped = consumers_of((p.group, p.keep) for p in plans if p.config.compensate)
    dropped = {name: cols for name, cols in dropped.items() if name not in where}
    return where | fold_means(modules, dropped, {name: stats[name][0] for name in dropped}, norm_after), refit_names


def _refit(model, modules, refit: dict, calib, max_batches, graph) -> dict[str, torch.Tensor]:
    """Layer -> bias change: in one lockstep pass when the graph calls every layer once, else per layer."""
    layers = {name: cols for name, cols in refit.items() if reconstructable(modules[name])}
    if graph is None or not called_once(graph, set(layers)):
        return reconstruct_consumers(model, modules, refit, calib, max_batches)
    batches = calibration_batches(calib, max_batches)
    deltas, scarce = refit_in_lockstep(model, graph, layers, batches, DAMP, shift_output)
    warn_scarce(scarce)
    return deltas
