"""Bitmap sparse encoding: a packed bit per element + the non-zero values (pure math)."""

from __future__ import annotations

import numpy as np
import torch


def encode_bitmap(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(...) -> (ceil(n/8),) uint8 bitmap of non-zeros, (nnz,) values of t's dtype.

    Example:
        >>> bits, vals = encode_bitmap(torch.tensor([0, 3, 0, 5], dtype=torch.int8))
        >>> bits.tolist(), vals.tolist()
        ([80], [3, 5])
    """
    flat = t.detach().cpu().contiguous().flatten()
    nonzero = flat != 0
    bitmap = torch.from_numpy(np.packbits(nonzero.numpy()))
    return bitmap, flat[nonzero].clone()


def decode_bitmap(bitmap: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `encode_bitmap`; checks that the value count matches the bitmap."""
    n = int(np.prod(shape)) if shape else 1
    mask = torch.from_numpy(np.unpackbits(bitmap.numpy(), count=n).astype(bool))
    if int(mask.sum()) != values.numel():
        raise ValueError(f"bitmap marks {int(mask.sum())} non-zeros but {values.numel()} values are stored")
    out = torch.zeros(n, dtype=values.dtype)
    out[mask] = values
    return out.view(shape)


def bitmap_bytes(t: torch.Tensor) -> int:
    """Bytes `encode_bitmap` would use, without encoding."""
    nnz = int((t != 0).sum())
    return (t.numel() + 7) // 8 + nnz * t.element_size()


def dense_bytes(t: torch.Tensor) -> int:
    """Bytes of the tensor stored densely."""
    return t.numel() * t.element_size()
