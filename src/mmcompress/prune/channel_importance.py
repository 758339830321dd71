"""Unit importance for structured pruning: pure tensor math on weights, no model walk.

A convolution followed by BatchNorm is scale-free: BN divides its output by the running standard
deviation, so the kernel's own magnitude says little about what a channel contributes. What
reaches the next layer is the BN-folded kernel, W * gamma / sqrt(var + eps) (Liu et al. 2017,
"network slimming", rank channels by |gamma|; Torch-Pruning sums the group's BN scales in). Its
L1 norm per output unit is the default score of a channel here.
"""

from __future__ import annotations

import torch


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output unit's weights: (out, ...) -> (out,).

    Example:
        >>> row_norms(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        tensor([3.0000, 0.5000])
    """
    return weight.detach().float().abs().reshape(weight.shape[0], -1).sum(1)


def bn_scale(gamma: torch.Tensor | None, running_var: torch.Tensor | None, eps: float) -> torch.Tensor | None:
    """|gamma| / sqrt(var + eps) per channel: how much BatchNorm (eval) scales its input, (C,) -> (C,).

    Example:
        >>> bn_scale(torch.tensor([2.0, 0.0]), torch.tensor([3.0, 1.0]), 1.0)
        tensor([1., 0.])
    """
    if running_var is None:
        return None if gamma is None else gamma.detach().float().abs()
    scale = (running_var.detach().float() + eps).rsqrt()
    return scale if gamma is None else scale * gamma.detach().float().abs()


def normalised(score: torch.Tensor) -> torch.Tensor:
    """Score / its mean, so layers of different scales weigh equally when summed over a group.

    Example:
        >>> normalised(torch.tensor([1.0, 3.0]))
        tensor([0.5000, 1.5000])
    """
    return score / score.mean().clamp_min(1e-12)


def keep_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Units kept when `ratio` of `size` are removed, a multiple of `round_to` (may be 0).

    Example:
        >>> keep_count(6, 0.25), keep_count(32, 0.3)
        (4, 22)
    """
    return int(round(size * (1 - ratio) / round_to)) * round_to


def top_units(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` highest scores.

    Example:
        >>> top_units(torch.tensor([0.1, 0.9, 0.5]), 2)
        tensor([1, 2])
    """
    return score.argsort(descending=True, stable=True)[:keep].sort().values


def removed_share(score: torch.Tensor, keep: torch.Tensor) -> float:
    """Fraction of the total score carried by the removed units (0: only dead units went).

    Example:
        >>> removed_share(torch.tensor([1.0, 3.0]), torch.tensor([1]))
        0.25
    """
    total = float(score.sum())
    return 0.0 if total <= 0 else max(0.0, 1.0 - float(score[keep].sum()) / total)


def cap_ratio(cfg) -> float:
    """The most a group may lose under global allocation: `max_ratio`, else twice `ratio` (at most 0.9)."""
    return cfg.max_ratio if cfg.max_ratio is not None else min(2 * cfg.ratio, 0.9)


def global_keep(scores: list[torch.Tensor], sizes: list[int], ratio: float, cap: float, round_to: int = 1) -> list[int]:
    """Units each group keeps when `ratio` of all units go by one ranking of their (normalised)
    scores, no group losing more than `cap` of its units: [(size_g,)], [size_g] -> [keep_g].

    Example:
        >>> global_keep([torch.tensor([1.0, 1.0]), torch.tensor([0.1, 1.9, 1.0, 1.0])], [2, 4], 1 / 3, 0.5)
        [2, 2]
    """
    total = sum(sizes)
    budget = int(round(total * ratio))
    floor = [max(keep_count(size, cap, round_to), round_to) for size in sizes]  # fewest units a group keeps
    flat = torch.cat(scores)  # (total,)
    owner = torch.cat([torch.full((size,), g) for g, size in enumerate(sizes)])
    removed = [0] * len(sizes)
    taken = 0
    for index in flat.argsort(stable=True).tolist():
        if taken >= budget:
            break
        g = int(owner[index])
        if sizes[g] - removed[g] > floor[g]:
            removed[g] += 1
            taken += 1
    return [max(floor[g], int(round((size - removed[g]) / round_to)) * round_to) for g, size in enumerate(sizes)]
