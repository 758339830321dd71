"""Integer weight codes: the grid a weight is quantized on and the module that holds codes + steps.

Codes live in int8 tensors in memory (any 2..8 bits); the compact file format packs codes of
fewer than 8 bits into a bit stream, so stored sizes are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmcompress.quant.observers import mse_clip_ratios
from mmcompress.quant.primitives import affine_params, dequantize_affine, quantize_affine, to_groups


@dataclass(frozen=True)
class WeightGrid:
    """How one weight is quantized.

    Attributes:
        bits: 2..8.
        symmetric: zero point 0 (else asymmetric with an int8 zero point per group).
        group_size: inputs per step (None: one step per output channel / row).
        per_tensor: one step for the whole tensor (overrides group_size).
        observer: "minmax" or "mse" (search a clipping ratio per group).
        clip_ratio: fraction of the range kept with "minmax" (layer-wise step search sets it).

    Example:
        >>> WeightGrid(bits=4, group_size=128)
    """

    bits: int = 8
    symmetric: bool = True
    group_size: int | None = None
    per_tensor: bool = False
    observer: str = "minmax"
    clip_ratio: float = 1.0

    def describe(self) -> str:
        """A short description: "bits=4, asym, group 128"."""
        shape = "per-tensor" if self.per_tensor else f"group {self.group_size}" if self.group_size else "per-channel"
        return f"bits={self.bits}, {'sym' if self.symmetric else 'asym'}, {shape}"


def quantize_weight(weight: torch.Tensor, grid: WeightGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (weight's shape, int8), steps (out, G) and zero points (out, G) for a weight.

    Example:
        >>> codes, scale, zero = quantize_weight(torch.randn(8, 64), WeightGrid(bits=4, group_size=32))
    """
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds NaN or Inf")
    groups = to_groups(weight, grid.group_size)  # (out, G, g)
    if grid.per_tensor:
        groups = weight.reshape(1, 1, -1)
    ratio = mse_clip_ratios(groups, grid.bits, grid.symmetric) if grid.observer == "mse" else grid.clip_ratio
    scale, zero = affine_params(groups, grid.bits, grid.symmetric, ratio)
    codes = quantize_affine(groups, scale, zero, grid.bits, grid.symmetric).view_as(weight)
    if grid.per_tensor:  # store one step per row so every module has the same layout
        scale, zero = scale.expand(weight.shape[0], 1).clone(), zero.expand(weight.shape[0], 1).clone()
    return codes, scale.float(), zero


def kept_range_ratios(weight: torch.Tensor, grid: WeightGrid, scale: torch.Tensor) -> torch.Tensor | None:
    """Each group's step over its full-range (min/max) step: the fraction of the range the grid keeps.

    What an `mse` observer (or GPTQ's search) chose, read back from the steps; None where the steps
    do not have one entry per group of `weight` (per-tensor grids, LSTM/GRU stacks).

    Example:
        >>> grid = WeightGrid(bits=4, observer="mse")
        >>> w = torch.randn(8, 64)
        >>> float(kept_range_ratios(w, grid, quantize_weight(w, grid)[1]).max()) <= 1.0
        True
    """
    if grid.per_tensor or weight.dim() < 2:
        return None
    groups = to_groups(weight.reshape(weight.shape[0], -1), grid.group_size)
    full, _ = affine_params(groups, grid.bits, grid.symmetric, 1.0)
    if full.shape != scale.shape:
        return None
    return scale / full.clamp_min(torch.finfo(torch.float32).tiny)


class _QuantWeight(nn.Module):
    """Holds `qweight` (int8 codes), `scale` (out, G) and, when asymmetric, `zero_point` (out, G)."""

    grid: WeightGrid
    kernel: str = "auto"  # how forward computes: see quant/kernels.py ("simulate": the reference)
    last_kernel: str | None = None  # the path the last forward call took

    def __getstate__(self) -> dict:
        """Pickle/deepcopy without the kernel caches (float weight, packed int8 weight): rebuilt on use."""
        state = dict(self.__dict__)
        state["_kernel_cache"] = {}
        state.pop("_float_weight", None)
        return state

    def _init_quant(self, weight: torch.Tensor, grid: WeightGrid, params: tuple | None = None) -> None:
        """Quantize `weight` on `grid`, or take precomputed `params` = (codes, scale, zero) (e.g. GPTQ)."""
        codes, scale, zero = params if params is not None else quantize_weight(weight.detach(), grid)
        codes = codes.reshape(weight.shape).to(torch.int8)
        self.register_buffer("qweight", codes)
        self.register_buffer("scale", scale)
        if not grid.symmetric:
            self.register_buffer("zero_point", zero)
        self.grid = grid

    @property
    def bits(self) -> int:
        return self.grid.bits

    def _zero(self) -> torch.Tensor:
        zero = getattr(self, "zero_point", None)
        return torch.zeros_like(self.scale, dtype=torch.int8) if zero is None else zero

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, read-only (model code that reads `.weight.dtype` keeps working)."""
        return self.dequantized_weight()

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the module computes with: (codes - zero) * step."""
        groups = self.qweight.reshape(self.qweight.shape[0], self.scale.shape[1], -1)  # (out, G, g)
        return dequantize_affine(groups, self.scale, self._zero()).view(self.qweight.shape)

    def extra_repr(self) -> str:
        return f"{tuple(self.qweight.shape)}, {self.grid.describe()}"


class QuantWeightTensor(_QuantWeight):
    """One integer-coded weight matrix of a layer that has several (an LSTM/GRU gate matrix).

    Example:
        >>> QuantWeightTensor(torch.randn(12, 4), WeightGrid(bits=8)).dequantized_weight().shape
        torch.Size([12, 4])
    """

    def __init__(self, weight: torch.Tensor, grid: WeightGrid, params: tuple | None = None) -> None:
        super().__init__()
        self._init_quant(weight, grid, params)
