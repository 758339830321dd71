"""SparseGPT (Frantar & Alistarh, 2023): prune a Linear weight column block by column block,
choosing the mask from w^2 / [H^-1]_jj^2 and pushing each removed weight's error onto the
remaining columns through the inverse Hessian of the layer's inputs. Pure math.
"""

from __future__ import annotations

import torch

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

    Args:
        weight: (out, in) float weight.
        hessian: (in, in) 2 X X^T of the layer's inputs (see `quant.gptq.accumulate_hessian`).
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
    w = weight.detach().double().clone()
    out_dim, in_dim = w.shape
    if nm is not None and (block_size % nm[1] or in_dim % nm[1]):
        raise ValueError(f"N:M group size {nm[1]} must divide the {in_dim} inputs and the block size {block_size}")
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(in_dim, dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, in_dim, block_size):
        end = min(start + block_size, in_dim)
        w_blk, h_blk = w[:, start:end].clone(), h_inv[start:end, start:end]
        err_blk = torch.zeros_like(w_blk)
        saliency = w_blk**2 / torch.diag(h_blk).unsqueeze(0) ** 2
        if nm is not None:
            keep_blk = nm_mask(saliency, *nm)
        else:
            keep_blk = torch.ones_like(w_blk, dtype=torch.bool)
            drop = int(sparsity * saliency.numel())
            if drop:
                keep_blk.view(-1)[saliency.flatten().argsort()[:drop]] = False
        for i in range(end - start):
            q = w_blk[:, i] * keep_blk[:, i]
            err = (w_blk[:, i] - q) / h_blk[i, i]
            w_blk[:, i:] -= err.unsqueeze(1) @ h_blk[i, i:].unsqueeze(0)
            w_blk[:, i] = q
            err_blk[:, i] = err
        w[:, start:end] = w_blk
        keep[:, start:end] = keep_blk
        w[:, end:] -= err_blk @ h_inv[start:end, end:]
    return w.to(weight.dtype) * keep, keep
