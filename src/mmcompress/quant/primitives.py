"""Uniform quantization math (pure tensor functions).

theta' = round(theta / q) * q with step q per channel; symmetric, signed integers.
"""

from __future__ import annotations

import torch


def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range for `bits`: 8 -> (-127, 127) (symmetric, no -128).

    Example:
        >>> qrange(4)
        (-7, 7)
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    top = 2 ** (bits - 1) - 1
    return -top, top


def symmetric_scale(weight: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Per-channel step q = max|w| / qmax along all dims except `axis`: (out, ...) -> (out,).

    Example:
        >>> symmetric_scale(torch.tensor([[1.0, -2.0], [0.5, 0.0]]), 8)
        tensor([0.0157, 0.0039])
    """
    dims = [d for d in range(weight.dim()) if d != axis]
    amax = weight.detach().abs().amax(dim=dims) if dims else weight.detach().abs()
    return (amax / qrange(bits)[1]).clamp_min(torch.finfo(torch.float32).tiny).float()


def _broadcast(scale: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return scale.view(shape)


def quantize_symmetric(weight: torch.Tensor, scale: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Integer codes round(w / q) clamped to the signed range, as int8: (out, ...) -> (out, ...).

    Example:
        >>> w = torch.randn(4, 3); q = symmetric_scale(w, 8)
        >>> quantize_symmetric(w, q, 8).dtype
        torch.int8
    """
    lo, hi = qrange(bits)
    codes = torch.round(weight.detach().float() / _broadcast(scale, weight.dim(), axis)).clamp_(lo, hi)
    return codes.to(torch.int8)


def dequantize_symmetric(codes: torch.Tensor, scale: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Float weights codes * q: (out, ...) int8 -> (out, ...) float32."""
    return codes.float() * _broadcast(scale, codes.dim(), axis)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|x|^2 / |x - x'|^2).

    Example:
        >>> sqnr_db(torch.ones(4), torch.ones(4) * 1.01) > 39
        True
    """
    noise = (reference.double() - approx.double()).pow(2).sum()
    signal = reference.double().pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))
