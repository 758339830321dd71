"""Pack signed b-bit codes (b = 1..8) into a dense bit stream of bytes, and back (exact).

A tensor of n codes takes ceil(n * b / 8) bytes, so stored sizes of 2/3/4-bit weights are real.
"""

from __future__ import annotations

import numpy as np
import torch


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes `pack_codes` produces for `numel` codes of `bits` bits.

    Example:
        >>> packed_nbytes(10, 3)
        4
    """
    return (numel * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes in [-2^(b-1), 2^(b-1) - 1] -> (ceil(n*b/8),) uint8 bit stream.

    Example:
        >>> pack_codes(torch.tensor([-8, 7], dtype=torch.int8), 4).tolist()
        [15]
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = codes.detach().cpu().flatten().to(torch.int16) + (1 << (bits - 1))  # unsigned offset
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes outside the signed {bits}-bit range cannot be packed")
    as_bytes = flat.to(torch.uint8).numpy()[:, None]  # (n, 1)
    bit_rows = np.unpackbits(as_bytes, axis=1)[:, 8 - bits :]  # (n, bits), most significant first
    return torch.from_numpy(np.packbits(bit_rows.reshape(-1)))


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_codes`: (bytes,) uint8 -> int8 codes of `shape`.

    Example:
        >>> unpack_codes(torch.tensor([15], dtype=torch.uint8), 4, (2,)).tolist()
        [-8, 7]
    """
    n = int(np.prod(shape)) if shape else 1
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {n} codes of {bits} bits")
    bit_rows = np.unpackbits(packed.cpu().numpy(), count=n * bits).reshape(n, bits)
    padded = np.concatenate([np.zeros((n, 8 - bits), dtype=np.uint8), bit_rows], axis=1)
    values = np.packbits(padded, axis=1)[:, 0].astype(np.int16) - (1 << (bits - 1))
    return torch.from_numpy(values.astype(np.int8)).view(shape)
