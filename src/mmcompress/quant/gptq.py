"""GPTQ (Frantar et al., 2022): quantize weight columns one by one, pushing each column's error
onto the not-yet-quantized columns through the inverse Hessian of the layer's inputs. Pure math.

Every function also takes a leading batch of independent problems: a grouped convolution with g
groups is g layers, each with its own (k, k) input Hessian, solved together in one batched loop.
"""

from __future__ import annotations

import torch

from mmcompress.core.hessian import (
    accumulate_hessian,  # noqa: F401  (re-exported)
    batched_problem,
    damped_inverse_factor,
)
from mmcompress.quant.observers import mse_clip_ratios
from mmcompress.quant.primitives import affine_params, code_range, to_groups


def _permute(w: torch.Tensor, h: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder columns: w (B, out, in), h (B, in, in) by perm (B, in)."""
    w = w.gather(-1, perm.unsqueeze(1).expand_as(w))
    h = h.gather(-1, perm.unsqueeze(1).expand_as(h)).gather(-2, perm.unsqueeze(2).expand_as(h))
    return w, h


def _group_steps(
    w: torch.Tensor, diag: torch.Tensor, g: int, bits: int, symmetric: bool, observer: str, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps and zero points of w (B, out, n) in groups of g columns: (B*out, n / g) each."""
    nb, out_dim, n = w.shape
    groups = to_groups(w.reshape(nb * out_dim, n), g)  # (B*out, G, g)
    if observer == "mse":
        importance = diag.float().repeat_interleave(out_dim, 0).view_as(groups)
        clip_ratio = mse_clip_ratios(groups, bits, symmetric, importance=importance)
    return affine_params(groups, bits, symmetric, clip_ratio)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    group_size: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    observer: str = "minmax",
    clip_ratio: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ for an (out, in) weight with an (in, in) Hessian, or a batch: (B, out, in) with (B, in, in).

    Returns codes (..., out, in) int8, steps and zero points (..., out, G). Steps are per group of
    `group_size` consecutive input columns (None: per output row). With `act_order`, columns are
    processed by decreasing Hessian diagonal and group steps are fixed from the original weight up
    front ("static groups"), so groups stay on contiguous columns and the storage layout is unchanged.
    `observer` "mse" searches each group's clipping ratio for the least squared error weighted by the
    Hessian diagonal (the error the layer's output sees); "minmax" keeps `clip_ratio` of the range.

    Example:
        >>> H, _ = accumulate_hessian(torch.zeros(64, 64, dtype=torch.float64), 0, torch.randn(256, 64))
        >>> codes, scale, zero = gptq_quantize(torch.randn(16, 64), H, bits=4, group_size=32)
    """
    batched, w, h = batched_problem(weight, hessian)
    nb, out_dim, in_dim = w.shape
    g = min(group_size, in_dim) if group_size else in_dim
    if in_dim % g:
        raise ValueError(f"group size {group_size} does not divide the {in_dim} inputs per channel")
    static = act_order or g == in_dim  # steps fixed from the original weight
    diag = torch.diagonal(h, dim1=-2, dim2=-1)  # (B, in)
    lo, hi = code_range(bits, symmetric)
    scale = torch.zeros(nb, out_dim, in_dim // g, dtype=torch.float64)
    zero = torch.zeros_like(scale)
    if static:
        s, z = _group_steps(w, diag, g, bits, symmetric, observer, clip_ratio)  # (B*out, G)
        scale, zero = s.double().view_as(scale), z.double().view_as(zero)
    perm = diag.argsort(-1, descending=True) if act_order else torch.arange(in_dim).expand(nb, in_dim)
    if act_order:
        w, h = _permute(w, h, perm)
    h_inv = damped_inverse_factor(h, damp)
    group_of = (perm // g).unsqueeze(1).expand(nb, out_dim, in_dim)  # (B, out, in) group of each column
    codes = torch.zeros_like(w)
    for start in range(0, in_dim, block_size):
        end = min(start + block_size, in_dim)
        w_blk, h_blk = w[..., start:end].clone(), h_inv[:, start:end, start:end]  # (B, out, b), (B, b, b)
        err_blk = torch.zeros_like(w_blk)
        for i in range(end - start):
            col = start + i
            if not static and col % g == 0:  # a new group's step from the weights as updated so far
                cols = slice(col, col + g)
                s, z = _group_steps(w[..., cols], diag[:, cols], g, bits, symmetric, observer, clip_ratio)
                scale[..., col // g], zero[..., col // g] = s.view(nb, out_dim), z.double().view(nb, out_dim)
            idx = group_of[..., col : col + 1]
            s_col, z_col = scale.gather(-1, idx)[..., 0], zero.gather(-1, idx)[..., 0]  # (B, out)
            q = torch.clamp(torch.round(w_blk[..., i] / s_col) + z_col, lo, hi)
            codes[..., col] = q
            err = (w_blk[..., i] - (q - z_col) * s_col) / h_blk[:, i, i].unsqueeze(1)  # (B, out)
            w_blk[..., i:] -= err.unsqueeze(2) * h_blk[:, i, i:].unsqueeze(1)
            err_blk[..., i] = err
        w[..., start:end] = w_blk
        w[..., end:] -= err_blk @ h_inv[:, start:end, end:]
    codes = codes.gather(-1, perm.argsort(-1).unsqueeze(1).expand_as(codes))  # back to the original order
    codes, scale, zero = codes.to(torch.int8), scale.float(), zero.to(torch.int8)
    return (codes, scale, zero) if batched else (codes[0], scale[0], zero[0])
