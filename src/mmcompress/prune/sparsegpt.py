"""SparseGPT (Frantar & Alistarh, 2023): prune a Linear or (grouped) Conv2d weight column block by column block,
choosing the mask from w^2 / [H^-1]_jj^2 and pushing each removed weight's error onto the
remaining columns through the inverse Hessian of the layer's inputs. Pure math.
"""

from __future__ import annotations

import torch

from mmcompress.core.hessian import batched_problem, damped_inverse_factor
from mmcompress.prune.patterns import nm_mask


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune an (out, in) weight with second-order updates; returns (new weight, keep mask).

    A batch of independent layers, (B, out, in) with (B, in, in) Hessians (the groups of a grouped
    convolution), is solved in one batched loop; the unstructured mask of each block of columns is
    chosen across the whole batch, so the layer as a whole meets `sparsity`.

    Args:
        weight: (out, in) or (B, out, in) float weight.
        hessian: (in, in) or (B, in, in) 2 X X^T of the layer's inputs (`quant.gptq.accumulate_hessian`).
        sparsity: fraction removed in each block of columns (unstructured).
        nm: (N, M) to keep N of every M consecutive inputs instead.
        block_size: columns per mask-selection block (a multiple of M for N:M).
        damp: Hessian damping as a fraction of its mean diagonal.

    Example:
        >>> H = 2 * torch.randn(256, 32).T @ torch.randn(256, 32) / 256
        >>> w, mask = sparsegpt_prune(torch.randn(8, 32), H, 0.5)
        >>> float((w == 0).float().mean())
        0.5
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    batched, w, h = batched_problem(weight, hessian)
    nb, out_dim, in_dim = w.shape
    if nm is not None and (block_size % nm[1] or in_dim % nm[1]):
        raise ValueError(f"N:M group size {nm[1]} must divide the {in_dim} inputs and the block size {block_size}")
    h_inv = damped_inverse_factor(h, damp)  # (B, in, in)
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, in_dim, block_size):
        end = min(start + block_size, in_dim)
        w_blk, h_blk = w[..., start:end].clone(), h_inv[:, start:end, start:end]  # (B, out, b), (B, b, b)
        err_blk = torch.zeros_like(w_blk)
        saliency = w_blk**2 / torch.diagonal(h_blk, dim1=-2, dim2=-1).unsqueeze(1) ** 2  # (B, out, b)
        keep_blk = _block_mask(saliency, sparsity, nm)
        for i in range(end - start):
            q = w_blk[..., i] * keep_blk[..., i]
            err = (w_blk[..., i] - q) / h_blk[:, i, i].unsqueeze(1)  # (B, out)
            w_blk[..., i:] -= err.unsqueeze(2) * h_blk[:, i, i:].unsqueeze(1)
            w_blk[..., i] = q
            err_blk[..., i] = err
        w[..., start:end] = w_blk
        keep[..., start:end] = keep_blk
        w[..., end:] -= err_blk @ h_inv[:, start:end, end:]
    w = w.to(weight.dtype) * keep
    return (w, keep) if batched else (w[0], keep[0])


def _block_mask(saliency: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Keep mask of one block (B, out, b): N:M per row, or the lowest `sparsity` fraction dropped."""
    if nm is not None:
        return nm_mask(saliency.reshape(-1, saliency.shape[-1]), *nm).view_as(saliency)
    keep = torch.ones_like(saliency, dtype=torch.bool)
    drop = int(sparsity * saliency.numel())
    if drop:
        keep.view(-1)[saliency.flatten().argsort()[:drop]] = False
    return keep
