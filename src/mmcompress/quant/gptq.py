"""GPTQ (Frantar et al., 2022): quantize weight columns one by one, pushing each column's error
onto the not-yet-quantized columns through the inverse Hessian of the layer's inputs. Pure math.
"""

from __future__ import annotations

import torch

from mmcompress.quant.primitives import affine_params, code_range, to_groups


def accumulate_hessian(hessian: torch.Tensor, count: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Running mean of 2 X X^T over input rows: x (..., in) -> hessian (in, in).

    Example:
        >>> H, n = accumulate_hessian(torch.zeros(4, 4), 0, torch.randn(10, 4))
    """
    rows = x.reshape(-1, x.shape[-1]).double()  # (n, in)
    new = count + rows.shape[0]
    hessian.mul_(count / new).add_(rows.T @ rows, alpha=2.0 / new)
    return hessian, new


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    group_size: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ for one (out, in) weight. Returns codes (out, in) int8, steps and zero points (out, G).

    Steps are per group of `group_size` consecutive input columns (None: per output row). With
    `act_order`, columns are processed by decreasing Hessian diagonal and group steps are fixed
    from the original weight up front ("static groups"), so the storage layout is unchanged.

    Example:
        >>> H, _ = accumulate_hessian(torch.zeros(64, 64, dtype=torch.float64), 0, torch.randn(256, 64))
        >>> codes, scale, zero = gptq_quantize(torch.randn(16, 64), H, bits=4, group_size=32)
    """
    w = weight.detach().double().clone()  # (out, in)
    out_dim, in_dim = w.shape
    g = min(group_size, in_dim) if group_size else in_dim
    if in_dim % g:
        raise ValueError(f"group size {group_size} does not divide the {in_dim} inputs per channel")
    group_size = None if g == in_dim else g
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    lo, hi = code_range(bits, symmetric)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(in_dim)
    inv_perm = torch.argsort(perm)
    scale = torch.zeros(out_dim, in_dim // g, dtype=torch.float64)
    zero = torch.zeros(out_dim, in_dim // g, dtype=torch.float64)
    if act_order or group_size is None:  # static steps from the original weight
        s, z = affine_params(to_groups(w, group_size), bits, symmetric)
        scale, zero = s.double(), z.double()
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(in_dim, dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros_like(w)
    for start in range(0, in_dim, block_size):
        end = min(start + block_size, in_dim)
        w_blk, err_blk, h_blk = w[:, start:end].clone(), torch.zeros_like(w[:, start:end]), h_inv[start:end, start:end]
        for i in range(end - start):
            col = perm[start + i]  # original column index
            grp = int(col) // g
            if not act_order and group_size is not None and int(col) % g == 0:
                # step of a new group from the weights as updated so far (as the reference GPTQ does)
                s, z = affine_params(w[:, start + i : start + i + g].unsqueeze(1), bits, symmetric)
                scale[:, grp], zero[:, grp] = s[:, 0].double(), z[:, 0].double()
            s_col, z_col = scale[:, grp], zero[:, grp]
            q = torch.clamp(torch.round(w_blk[:, i] / s_col) + z_col, lo, hi)
            codes[:, start + i] = q
            err = (w_blk[:, i] - (q - z_col) * s_col) / h_blk[i, i]
            w_blk[:, i:] -= err.unsqueeze(1) @ h_blk[i, i:].unsqueeze(0)
            err_blk[:, i] = err
        w[:, start:end] = w_blk
        w[:, end:] -= err_blk @ h_inv[start:end, end:]
    return codes[:, inv_perm].to(torch.int8), scale.float(), zero.to(torch.int8)
