"""Importance criteria: a score per weight (higher = keep). Pure tensor math, one small class each.

Each criterion turns a weight and the statistics it needs into a score tensor of the weight's
shape; unit scores for structured pruning sum them over a unit's slice (`unit_scores`).
- magnitude: |w| (L1) or w^2 (L2);
- taylor: |w * dL/dw| accumulated over batches (first-order change of the loss, Molchanov 2019);
- fisher: 1/2 * w^2 * F with F the mean squared gradient (diagonal Fisher = Hessian estimate,
  optimal brain damage saliency);
- wanda: |w| * ||x_j||_2 with x_j the j-th input feature over calibration data (Sun et al. 2023).
"""

from __future__ import annotations

import torch

from mmcompress.core.layer_stats import Stats

CRITERIA = ("magnitude", "taylor", "fisher", "wanda")


def magnitude_scores(weight: torch.Tensor, norm: int = 1) -> torch.Tensor:
    """|w| (norm 1) or w^2 (norm 2).

    Example:
        >>> magnitude_scores(torch.tensor([-2.0, 1.0]), norm=2)
        tensor([4., 1.])
    """
    w = weight.detach().float()
    return w.abs() if norm == 1 else w * w


def taylor_scores(stats: Stats) -> torch.Tensor:
    """Mean |w * dL/dw| over the accumulated batches."""
    _need(stats.grad_product, "taylor", "gradients")
    return stats.grad_product / stats.batches


def fisher_scores(weight: torch.Tensor, stats: Stats) -> torch.Tensor:
    """Optimal-brain-damage saliency 1/2 * w^2 * F with the diagonal Fisher F = mean grad^2."""
    _need(stats.grad_square, "fisher", "gradients")
    w = weight.detach().float()
    return 0.5 * w * w * (stats.grad_square / stats.batches)


def wanda_scores(weight: torch.Tensor, stats: Stats) -> torch.Tensor:
    """|w_ij| * ||x_j||_2 for a Linear (out, in) or Conv2d (out, in / g, kh, kw) weight.

    Conv inputs are the unfolded patches. For a grouped conv (norms (g, k)), output channel o
    belongs to group o // (out / g) and sees that group's k columns (depthwise: its own channel).

    Example:
        >>> s = Stats(); s.add_inputs(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
        >>> wanda_scores(torch.ones(1, 2), s)
        tensor([[5., 1.]])
    """
    _need(stats.input_sq_norm, "wanda", "calibration inputs")
    w = weight.detach().float()
    norms = stats.input_sq_norm.sqrt().reshape(-1, stats.input_sq_norm.shape[-1])  # (g, k)
    flat = w.reshape(w.shape[0], -1)  # (out, k)
    groups = norms.shape[0]
    if norms.shape[1] != flat.shape[1] or flat.shape[0] % groups:
        raise ValueError(
            f"input norms of {groups} group(s) x {norms.shape[1]} inputs do not fit a weight with "
            f"{flat.shape[0]} outputs x {flat.shape[1]} inputs per output"
        )
    per_output = norms.repeat_interleave(flat.shape[0] // groups, dim=0)  # (out, k)
    return (flat.abs() * per_output).view_as(w)


def scores_for(criterion: str, weight: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
    """Dispatch by name (an allow-list): a score per weight, higher means more important.

    Example:
        >>> scores_for("magnitude", torch.tensor([-3.0, 1.0]))
        tensor([3., 1.])
    """
    if criterion == "magnitude":
        return magnitude_scores(weight)
    stats = stats or Stats()
    if criterion == "taylor":
        return taylor_scores(stats)
    if criterion == "fisher":
        return fisher_scores(weight, stats)
    if criterion == "wanda":
        return wanda_scores(weight, stats)
    raise ValueError(f"unknown importance criterion {criterion!r}; valid: {', '.join(CRITERIA)}")


def unit_scores(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Importance of each slice along `dim` (an output channel / neuron): the sum of its scores.

    Example:
        >>> unit_scores(torch.tensor([[1.0, 2.0], [0.0, 0.5]]))
        tensor([3.0000, 0.5000])
    """
    return scores.transpose(0, dim).reshape(scores.shape[dim], -1).sum(1)


def _need(value, criterion: str, what: str) -> None:
    if value is None:
        raise ValueError(f"importance {criterion!r} needs {what}: pass data= to prune")
