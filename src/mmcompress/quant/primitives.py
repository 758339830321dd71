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


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Signed code range: symmetric drops -2^(b-1) so that 0 is exact and the range is balanced.

    Asymmetric codes use the full signed range [-2^(b-1), 2^(b-1) - 1] with a zero point.

    Example:
        >>> code_range(4, symmetric=False)
        (-8, 7)
    """
    lo, hi = qrange(bits)
    return (lo, hi) if symmetric else (lo - 1, hi)


def to_groups(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """(out, ...) -> (out, n_groups, group) along the flattened input dims.

    One group per row when `group_size` is None or not smaller than the row; otherwise it must divide it.

    Example:
        >>> to_groups(torch.zeros(4, 256), 128).shape
        torch.Size([4, 2, 128])
    """
    flat = weight.reshape(weight.shape[0], -1)  # (out, in)
    size = flat.shape[1] if group_size is None else min(group_size, flat.shape[1])  # a row is one group at most
    if size <= 0 or flat.shape[1] % size:
        raise ValueError(f"group size {group_size} does not divide the {flat.shape[1]} inputs per channel")
    return flat.view(flat.shape[0], flat.shape[1] // size, size)


def affine_params(
    groups: torch.Tensor, bits: int, symmetric: bool, clip_ratio: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step and zero point per group from the (clipped) range: (out, G, g) -> (out, G), (out, G).

    Symmetric: q = max|w|*r / qmax, zero 0. Asymmetric: q = (max - min)*r / (2^b - 1), zero so that
    w = 0 maps to an integer code (0 stays exact).

    Example:
        >>> s, z = affine_params(torch.tensor([[[0.0, 1.0, 3.0]]]), 8, symmetric=False)
    """
    lo, hi = code_range(bits, symmetric)
    tiny = torch.finfo(torch.float32).tiny
    g = groups.detach().float()
    if symmetric:
        scale = (g.abs().amax(-1) * clip_ratio / hi).clamp_min(tiny)
        return scale, torch.zeros_like(scale, dtype=torch.int8)
    w_min = (g.amin(-1).clamp(max=0) * clip_ratio).clamp(max=0)
    w_max = (g.amax(-1).clamp(min=0) * clip_ratio).clamp(min=0)
    scale = ((w_max - w_min) / (hi - lo)).clamp_min(tiny)
    zero = (lo - torch.round(w_min / scale)).clamp(lo, hi)
    return scale, zero.to(torch.int8)


def quantize_affine(
    groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Codes round(w / q) + z clamped to the code range: (out, G, g) -> (out, G, g) int8."""
    lo, hi = code_range(bits, symmetric)
    codes = torch.round(groups.detach().float() / scale[..., None]) + zero[..., None].float()
    return codes.clamp_(lo, hi).to(torch.int8)


def dequantize_affine(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Float values (q - z) * step: (out, G, g) int8 -> (out, G, g) float32."""
    return (codes.float() - zero[..., None].float()) * scale[..., None]


def fake_quantize(weight: torch.Tensor, bits: int, symmetric: bool, group_size: int | None, clip_ratio=1.0):
    """Quantize then dequantize a weight with the given grid (same shape out as in).

    Example:
        >>> fake_quantize(torch.randn(8, 64), 4, True, 32).shape
        torch.Size([8, 64])
    """
    groups = to_groups(weight, group_size)
    scale, zero = affine_params(groups, bits, symmetric, clip_ratio)
    codes = quantize_affine(groups, scale, zero, bits, symmetric)
    return dequantize_affine(codes, scale, zero).view_as(weight)


def fake_quantize_dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """ONNX DynamicQuantizeLinear, quantized then dequantized: per-tensor uint8 over the whole input.

    The range always includes 0; steps and zero point follow the ONNX definition, so PyTorch
    and ONNX Runtime's int8 kernels see the same integers.

    Example:
        >>> fake_quantize_dynamic_uint8(torch.tensor([-1.0, 0.0, 3.0]))  # step 4/255
        tensor([-1.0039,  0.0000,  2.9961])
    """
    x_min = torch.clamp(x.detach().min(), max=0.0)
    x_max = torch.clamp(x.detach().max(), min=0.0)
    scale = (x_max - x_min) / 255.0
    empty = scale == 0.0  # an all-zero input stays as it is (a tensor test: no graph break under torch.compile)
    scale = torch.where(empty, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-x_min / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    return torch.where(empty, x, (q - zero) * scale)
