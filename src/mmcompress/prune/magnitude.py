"""Magnitude pruning masks (pure tensor math)."""

from __future__ import annotations

import torch


def magnitude_threshold(weights: list[torch.Tensor], sparsity: float) -> float:
    """The |w| value below which a `sparsity` fraction of all given weights falls.

    Example:
        >>> magnitude_threshold([torch.tensor([1.0, -2.0, 3.0, 0.5])], 0.5)
        1.0
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights])
    k = int(sparsity * scores.numel())
    if k == 0:
        return -1.0
    return float(scores.kthvalue(k).values)


def magnitude_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep weights with |w| > threshold: (...) -> (...) bool."""
    return weight.detach().abs() > threshold


def layer_masks(weights: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Masks for a group of weights: one global threshold ("global") or one per layer ("layer").

    Example:
        >>> [m.float().mean().item() for m in layer_masks([torch.randn(100)], 0.3, "layer")]
        [0.7]
    """
    if scope == "global":
        t = magnitude_threshold(weights, sparsity)
        return [magnitude_mask(w, t) for w in weights]
    if scope == "layer":
        return [magnitude_mask(w, magnitude_threshold([w], sparsity)) for w in weights]
    raise ValueError(f"unknown scope {scope!r}; valid: global, layer")
