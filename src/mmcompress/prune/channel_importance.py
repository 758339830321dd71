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
        [1, 3]
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


def greedy_removal_scores(
    weights: list[torch.Tensor], grams: list[torch.Tensor], columns: list[torch.Tensor], steps: int, damp: float = 0.01
) -> torch.Tensor:
    """Remove units one at a time, each time the one whose loss its consumers can least make up
    for by refitting their other columns (Optimal Brain Surgeon on whole column blocks, as in
    "Optimal Brain Compression" / ZipLM's structured pruning); higher score = removed later.

    Consumer c computes y = W_c z (z: its input columns and a constant 1, E[z z^T] = grams[c]);
    unit u is its columns B = columns[c][u]. Removing B with the others refit optimally costs
    tr(W_B [H^-1]_BB^-1 W_B^T), with H = G + damp * mean(diag G) I; W and H^-1 are then updated as
    OBS does. Costs are summed over consumers, each over its output energy tr(W G W^T). Removed
    units score the running maximum of their cost; after `steps` removals the rest score above.
    weights: [(out, k + 1)], grams: [(k + 1, k + 1)], columns: [(units, taps)] -> (units,).

    Example:
        >>> g = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x0, x1 correlated
        >>> w = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> greedy_removal_scores([w], [g], [torch.tensor([[0], [1]])], 1)  # x1 stands in for x0
        tensor([0.0547, 1.0053])
    """
    units = columns[0].shape[0]
    state = []
    for w, g, cols in zip(weights, grams, columns, strict=True):
        w, g = w.double(), g.double()
        h = g.clone()
        h.diagonal()[:-1] += damp * float(g.diagonal()[:-1].mean())
        energy = float(torch.einsum("oi,ij,oj->", w, g, w)) or 1.0
        state.append([w.clone(), torch.linalg.inv(h), cols.long(), energy])
    scores = torch.zeros(units, dtype=torch.float64)
    alive = torch.ones(units, dtype=torch.bool)
    level = 0.0

    def costs() -> torch.Tensor:
        total = torch.zeros(units, dtype=torch.float64)
        for w, hinv, cols, energy in state:
            block = hinv[cols[:, :, None], cols[:, None, :]]  # (units, t, t)
            block[~alive] = torch.eye(cols.shape[1], dtype=block.dtype)  # removed: zero rows, cost unused
            wb = w[:, cols]  # (out, units, t)
            total += torch.einsum("oui,uij,ouj->u", wb, torch.linalg.inv(block), wb) / energy
        return total

    for _ in range(min(steps, units - 1)):
        cost = costs().masked_fill(~alive, float("inf"))
        u = int(cost.argmin())
        level = max(level, float(cost[u]))
        scores[u], alive[u] = level, False
        for item in state:
            w, hinv, cols, _ = item
            b = cols[u]
            inv_bb = torch.linalg.inv(hinv[b][:, b])
            item[0] = w - w[:, b] @ inv_bb @ hinv[b]
            item[0][:, b] = 0
            item[1] = hinv - hinv[:, b] @ inv_bb @ hinv[b]
    rest = costs()[alive]
    scores[alive] = level + rest.clamp_min(0) + 1e-12
    return scores.float()
