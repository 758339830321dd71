"""Range observers: choose the clipping range [lo, hi] of a tensor before quantizing (pure math).

- minmax: the full range.
- percentile: the p-th and (100-p)-th percentiles (robust to rare outliers).
- mse: the clipping ratio of the min/max range that minimises the quantization error.
- kl: TensorRT-style entropy calibration: the threshold whose quantized histogram keeps the
  Kullback-Leibler divergence to the original histogram smallest (for activations).
"""

from __future__ import annotations

import torch

from mmcompress.quant.primitives import affine_params, code_range, dequantize_affine, quantize_affine

OBSERVERS = ("minmax", "percentile", "mse", "kl")


def minmax_range(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of x, widened to include 0.

    Example:
        >>> minmax_range(torch.tensor([1.0, 3.0]))
        (0.0, 3.0)
    """
    return min(float(x.min()), 0.0), max(float(x.max()), 0.0)


def percentile_range(x: torch.Tensor, percentile: float = 99.99) -> tuple[float, float]:
    """(p_low, p_high) percentiles of x, widened to include 0.

    Example:
        >>> percentile_range(torch.arange(101.0), 99.0)
        (0.0, 99.0)
    """
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    flat = x.detach().flatten().float()
    if flat.numel() > 1_000_000:  # quantile() is limited to 16M elements and slow: subsample evenly
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    q = torch.tensor([1 - percentile / 100, percentile / 100])
    lo, hi = torch.quantile(flat, q).tolist()
    return min(lo, 0.0), max(hi, 0.0)


def _fake_quant_range(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    qlo, qhi = code_range(bits, symmetric=False)
    scale = max(hi - lo, 1e-12) / (qhi - qlo)
    zero = qlo - round(lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, qlo, qhi) - zero) * scale


def mse_range(x: torch.Tensor, bits: int = 8, steps: int = 40) -> tuple[float, float]:
    """Shrink the min/max range by the ratio (searched geometrically in [0.01, 1]) with the smallest error.

    Example:
        >>> lo, hi = mse_range(torch.randn(10000), bits=4)
    """
    lo, hi = minmax_range(x)
    best, best_err = (lo, hi), float("inf")
    for ratio in torch.logspace(-2, 0, steps).tolist():
        err = float((_fake_quant_range(x, lo * ratio, hi * ratio, bits) - x).pow(2).mean())
        if err < best_err:
            best, best_err = (lo * ratio, hi * ratio), err
    return best


def kl_range(x: torch.Tensor, bits: int = 8, bins: int = 2048) -> tuple[float, float]:
    """Symmetric threshold minimising KL(P || Q) between the |x| histogram and its quantized version.

    Example:
        >>> lo, hi = kl_range(torch.randn(100000))
    """
    flat = x.detach().flatten().float()
    amax = float(flat.abs().max())
    if amax == 0:
        return 0.0, 0.0
    hist = torch.histc(flat.abs(), bins=bins, min=0, max=amax).double()
    levels = 2 ** (bits - 1)
    best_i, best_kl = bins, float("inf")
    for i in range(levels, bins + 1, max(1, bins // 256)):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()  # clip the tail into the last bin
        q = _requantize_histogram(hist[:i], levels)
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = (best_i + 0.5) * amax / bins
    return (-threshold if float(flat.min()) < 0 else 0.0), threshold


def _requantize_histogram(p: torch.Tensor, levels: int) -> torch.Tensor:
    """Merge `p` into `levels` buckets and spread each bucket evenly over its non-empty bins."""
    idx = torch.div(torch.arange(len(p)) * levels, len(p), rounding_mode="floor")
    sums = torch.zeros(levels, dtype=p.dtype).index_add_(0, idx, p)
    counts = torch.zeros(levels, dtype=p.dtype).index_add_(0, idx, (p > 0).to(p.dtype))
    return torch.where(p > 0, sums[idx] / counts[idx].clamp_min(1), torch.zeros_like(p))


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p / p.sum(), q / q.sum().clamp_min(1e-30)
    mask = p > 0
    return float((p[mask] * (p[mask] / q[mask].clamp_min(1e-12)).log()).sum())


def observe_range(x: torch.Tensor, method: str, bits: int = 8) -> tuple[float, float]:
    """Dispatch to one observer by name (an allow-list).

    Example:
        >>> observe_range(torch.randn(1000), "percentile")
    """
    if method == "minmax":
        return minmax_range(x)
    if method == "percentile":
        return percentile_range(x)
    if method == "mse":
        return mse_range(x, bits)
    if method == "kl":
        return kl_range(x, bits)
    raise ValueError(f"unknown observer {method!r}; valid: {', '.join(OBSERVERS)}")


def mse_clip_ratios(groups: torch.Tensor, bits: int, symmetric: bool, steps: int = 20) -> torch.Tensor:
    """Per-group clipping ratio of the weight range (searched in [0.5, 1]) minimising squared error.

    (out, G, g) -> (out, G). Used by the `mse` weight observer.

    Example:
        >>> mse_clip_ratios(torch.randn(4, 2, 64), 4, True).shape
        torch.Size([4, 2])
    """

    best_err = torch.full(groups.shape[:2], float("inf"))
    best_ratio = torch.ones(groups.shape[:2])
    for ratio in torch.linspace(0.5, 1.0, steps).tolist():
        scale, zero = affine_params(groups, bits, symmetric, ratio)
        deq = dequantize_affine(quantize_affine(groups, scale, zero, bits, symmetric), scale, zero)
        err = (deq - groups.float()).pow(2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio
