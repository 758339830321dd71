"""Repair after structured pruning: re-estimate BatchNorm statistics on calibration data.

Removing channels changes what every later BatchNorm receives (a removed channel's share of the
next layer's sum is gone), while its running mean and variance still describe the unpruned model.
Re-estimating them (Li et al. 2020, "EagleEye": adaptive BN) recovers accuracy without training:
running statistics are reset, calibration batches run forward with only the BatchNorm layers in
training mode (exact averages over all batches, momentum None), and every module's mode and
momentum are restored.

That replaces statistics gathered on the whole training set with those of the calibration set:
with a narrow calibration set (a few photos) it hurts more than pruning did. Given the unpruned
`reference`, only the *change* pruning caused is transferred: each BatchNorm keeps the reference's
running statistics, shifted by the difference of the input means and scaled by the ratio of the
input variances that the two models show on the same batches (measured layer after layer, each
BatchNorm already corrected when later ones are measured).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model, check_finite
from mmcompress.core.walker import forward_batches
from mmcompress.errors import ConfigError, DataError
from mmcompress.prune.dependency import eval_mode

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
VAR_RATIO_MIN, VAR_RATIO_MAX = 1e-3, 1e3  # a transferred variance moves at most this far


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    max_batches: int | None = None,
    *,
    reference: nn.Module | None = None,
    record: Any = None,
) -> int:
    """Re-estimate the running mean and variance of every BatchNorm of `model` on `batches`.

    Only the BatchNorm layers run in training mode (dropout and the rest stay in eval); weights
    and biases are not changed; each module's training flag and momentum are restored.

    Args:
        model: edited in place (BatchNorm running statistics only).
        batches: model inputs following the batch convention (tensor, tuple or dict).
        max_batches: use at most this many batches.
        reference: the unpruned model: transfer only the change of each BatchNorm's input
            statistics (see the module docstring), keeping the reference's own statistics.
        record: the `prune_structured` record that maps a shrunk BatchNorm's channels to the
            reference's (needed with `reference` when widths differ).

    Returns:
        The number of batches used.

    Example:
        >>> recalibrate_batchnorm(pruned, [x[i : i + 16] for i in range(0, 64, 16)])
        4
    """
    if reference is not None:
        return transfer_batchnorm(model, reference, batches, record, max_batches)
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms}
    used = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        with torch.no_grad():
            used = forward_batches(model, batches, max_batches, "BatchNorm recalibration")
        if used == 0:
            raise DataError("BatchNorm recalibration got no batches; give at least one")
    except BaseException:
        for m, (mean, var, tracked) in saved.items():  # leave the model as it was
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return used


def transfer_batchnorm(model: nn.Module, reference: nn.Module, batches, record=None, max_batches=None) -> int:
    """`recalibrate_batchnorm(model, batches, reference=reference, record=record)`."""
    ours = {n: m for n, m in model.named_modules() if isinstance(m, BATCH_NORMS) and m.running_mean is not None}
    theirs = dict(reference.named_modules())
    missing = [n for n in ours if not isinstance(theirs.get(n), BATCH_NORMS)]
    if missing:
        raise ConfigError(f"the reference model has no BatchNorm {missing[0]!r}; pass the model before pruning")
    kept = channel_maps(record)
    index = {n: kept.get(n, torch.arange(m.num_features)) for n, m in ours.items()}
    for n, m in ours.items():
        if len(index[n]) != m.num_features or int(index[n].max()) >= theirs[n].num_features:
            raise ConfigError(f"BatchNorm {n!r} has {m.num_features} channels; pass the pruning record= to map them")
    sums = {n: torch.zeros(4, m.num_features, dtype=torch.float64) for n, m in ours.items()}
    counts = dict.fromkeys(ours, 0)
    seen: dict[str, torch.Tensor] = {}  # the reference's (mean, var) of the current batch

    def watch(name):
        def hook(module, args):
            seen[name] = _moments(args[0])[:, index[name]]

        return hook

    def correct(name):
        def hook(module, args):
            sums[name] += torch.cat([_moments(args[0]), seen[name]])  # (4, C): ours, then the reference's
            counts[name] += 1
            _set_stats(module, theirs[name], index[name], sums[name] / counts[name])

        return hook

    handles = [theirs[n].register_forward_pre_hook(watch(n)) for n in ours]
    handles += [m.register_forward_pre_hook(correct(n)) for n, m in ours.items()]
    saved = {m: (m.running_mean.clone(), m.running_var.clone()) for m in ours.values()}
    used = 0
    try:
        with torch.no_grad(), eval_mode(model), eval_mode(reference):
            for batch in batches:
                if max_batches is not None and used >= max_batches:
                    break
                check_finite(batch, "BatchNorm recalibration")
                call_model(reference, batch)
                call_model(model, batch)
                used += 1
        if used == 0:
            raise DataError("BatchNorm recalibration got no batches; give at least one")
    except BaseException:
        for m, (mean, var) in saved.items():
            m.running_mean.copy_(mean), m.running_var.copy_(var)
        raise
    finally:
        for handle in handles:
            handle.remove()
    return used


def transferred_stats(ref_mean, ref_var, ours, theirs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference running statistics moved by the measured change: mean + (m_ours - m_ref), var * v_ours / v_ref.

    Example:
        >>> transferred_stats(torch.zeros(1), torch.ones(1), torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [4.0]]))
        (tensor([0.5000]), tensor([0.5000]))
    """
    ratio = ours[1] / theirs[1].clamp_min(1e-12)
    return ref_mean + (ours[0] - theirs[0]), ref_var * ratio.clamp(VAR_RATIO_MIN, VAR_RATIO_MAX)


def channel_maps(record: Any) -> dict[str, torch.Tensor]:
    """BatchNorm name -> the reference channels it kept, from a `prune_structured` record."""
    maps = {}
    for entry in record.modules.values() if record is not None else ():
        if entry.get("structure") == "channels":
            for norm in entry["group"]["norms"]:
                maps[norm] = torch.tensor(entry["keep"], dtype=torch.long)
    return maps


def _set_stats(module: nn.Module, ref: nn.Module, index: torch.Tensor, averages: torch.Tensor) -> None:
    ours, theirs = averages[:2], averages[2:]  # per-batch (mean, var) averaged over the batches so far
    mean, var = transferred_stats(ref.running_mean.double()[index], ref.running_var.double()[index], ours, theirs)
    module.running_mean.copy_(mean.to(module.running_mean.dtype))
    module.running_var.copy_(var.to(module.running_var.dtype))


def _moments(x: torch.Tensor) -> torch.Tensor:
    """Per-channel (mean, var) of a BatchNorm input (B, C, ...): (2, C)."""
    rows = x.detach().double().movedim(1, -1).reshape(-1, x.shape[1])
    return torch.stack([rows.mean(0), rows.var(0, unbiased=False)])
