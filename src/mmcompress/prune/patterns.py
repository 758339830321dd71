"""Masks from scores (pure tensor math): unstructured thresholds and N:M patterns."""

from __future__ import annotations

import torch


def parse_nm(pattern: str) -> tuple[int, int]:
    """ "2:4" -> (2, 4): keep N of every M consecutive weights along the input dimension.

    Example:
        >>> parse_nm("2:4")
        (2, 4)
    """
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except ValueError:
        raise ValueError(f"N:M pattern {pattern!r} is not two integers like '2:4'") from None
    if not 0 < n < m:
        raise ValueError(f"N:M pattern {pattern!r} needs 0 < N < M")
    return n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive inputs of each output row.

    Args:
        scores: (out, in) or (out, in, kh, kw); rows are flattened per output.

    Example:
        >>> nm_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4)
        tensor([[ True, False,  True, False]])
    """
    flat = scores.reshape(scores.shape[0], -1)
    if flat.shape[1] % m:
        raise ValueError(f"N:M group size {m} does not divide the {flat.shape[1]} inputs per output")
    groups = flat.reshape(flat.shape[0], -1, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.view_as(scores)


def threshold_masks(scores: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Unstructured masks removing the `sparsity` fraction of lowest scores: over all layers
    ("global"), per layer ("layer") or per output row of each layer ("row").

    Ties at the threshold are broken by position so the achieved sparsity is exact.

    Example:
        >>> [m.float().mean().item() for m in threshold_masks([torch.arange(10.0)], 0.3, "layer")]
        [0.7]
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "layer":
        return [_keep_top(s.flatten(), sparsity).view_as(s) for s in scores]
    if scope == "row":
        return [_keep_top_rows(s.reshape(s.shape[0], -1), sparsity).view_as(s) for s in scores]
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}; valid: global, layer, row")
    flat = _keep_top(torch.cat([s.flatten().float() for s in scores]), sparsity)
    return [part.view_as(s) for part, s in zip(flat.split([s.numel() for s in scores]), scores, strict=True)]


def _keep_top_rows(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The same fraction removed from every output row (Wanda's per-output comparison group)."""
    drop = int(sparsity * scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        mask.scatter_(1, scores.float().argsort(dim=1)[:, :drop], False)
    return mask


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    drop = int(sparsity * scores.numel())
    mask = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        mask[scores.float().argsort()[:drop]] = False
    return mask
