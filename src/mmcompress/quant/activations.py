"""Activation quantization of Linear inputs (W8A8): the settings and the pure math.

Three forms, each simulated in PyTorch with exactly the integers ONNX Runtime's kernels see:
- dynamic per tensor: one uint8 step for the whole input, per call (ONNX DynamicQuantizeLinear);
- dynamic per token: one symmetric step per row of the last dimension (a token), codes -127..127
  stored as uint8 with zero point 128, so x86's fast u8s8 kernels apply;
- static: one uint8 step and zero point fixed from calibration data with an observer.

SmoothQuant-style migration (`smoothing_factors`) divides input channel j by s_j and multiplies
the weight's column j by s_j: the product is unchanged, the activation outliers shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("dynamic", "static")
GRANULARITIES = ("per_tensor", "per_token")
TOKEN_LEVELS = 127  # symmetric per-token codes -127..127, offset by 128 into uint8


@dataclass(frozen=True)
class ActSpec:
    """How a Linear layer's input is quantized.

    Attributes:
        mode: "dynamic" (step computed per call) or "static" (step from calibration).
        granularity: "per_tensor" or "per_token" (dynamic only).
        observer: static range observer: "minmax", "percentile", "mse" or "kl".

    Example:
        >>> ActSpec("dynamic", "per_token")
    """

    mode: str = "dynamic"
    granularity: str = "per_tensor"
    observer: str = "minmax"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"activation mode {self.mode!r} is not one of {MODES}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"activation granularity {self.granularity!r} is not one of {GRANULARITIES}")
        if self.mode == "static" and self.granularity != "per_tensor":
            raise ValueError("static activation quantization is per tensor; use mode 'dynamic' for per-token")


def fake_quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """Symmetric per-token 8-bit quantization (step = max|row| / 127), quantized then dequantized.

    Example:
        >>> fake_quantize_per_token(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
        tensor([[ 1.0000, -0.5000],
                [ 0.0000,  0.0000]])
    """
    step = per_token_step(x)
    return torch.round(x / step) * step


def per_token_step(x: torch.Tensor) -> torch.Tensor:
    """Step per row of the last dimension: max(|row|, tiny) / 127, shape (..., 1)."""
    tiny = torch.finfo(torch.float32).tiny
    return x.detach().abs().amax(-1, keepdim=True).clamp_min(tiny) / TOKEN_LEVELS


def static_params(lo: float, hi: float) -> tuple[float, int]:
    """uint8 step and zero point for a calibrated range (widened to include 0, as ONNX requires).

    Example:
        >>> static_params(-1.0, 3.0)
        (0.01568627450980392, 64)
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / 255.0
    if step == 0.0:
        return 1.0, 0
    return step, int(min(max(round(-lo / step), 0), 255))


def fake_quantize_static(x: torch.Tensor, step: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """uint8 quantization with a fixed step and zero point (ONNX QuantizeLinear), dequantized.

    Example:
        >>> fake_quantize_static(torch.tensor([0.5, 9.0]), torch.tensor(0.01), torch.tensor(0))
        tensor([0.5000, 2.5500])
    """
    codes = torch.clamp(torch.round(x / step) + zero, 0, 255)
    return (codes - zero) * step


def fake_quantize_static_ste(x: torch.Tensor, step: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """`fake_quantize_static` with straight-through gradients (the rounding passes them unchanged;
    codes clamped to 0 or 255 pass none), for training through the quantization.

    Example:
        >>> fake_quantize_static_ste(torch.tensor([0.5, 9.0], requires_grad=True), torch.tensor(0.01), torch.tensor(0))
        tensor([0.5000, 2.5500], grad_fn=<MulBackward0>)
    """
    v = x / step
    codes = torch.clamp(v + (torch.round(v) - v).detach() + zero, 0, 255)
    return (codes - zero) * step


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant factors s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) per input channel j.

    Args:
        act_absmax: (in,) largest |input| per channel seen in calibration.
        weight: (out, in) float weight.
        alpha: migration strength in (0, 1): 0 keeps activations, 1 moves all range into weights.

    Example:
        >>> smoothing_factors(torch.tensor([8.0, 1.0]), torch.ones(2, 2), 0.5)
        tensor([2.8284, 1.0000])
    """
    if act_absmax.shape[0] != weight.shape[1]:
        raise ValueError(f"{act_absmax.shape[0]} activation channels for a weight with {weight.shape[1]} inputs")
    eps = 1e-5
    w_absmax = weight.detach().abs().amax(0).float().clamp_min(eps)
    factors = act_absmax.float().clamp_min(eps) ** alpha / w_absmax ** (1 - alpha)
    return factors.clamp(1e-2, 1e2)
