"""Modules that store weights as integer codes + float steps (+ zero points); weight-only compute.

Codes live in int8 tensors in memory (any 2..8 bits); the compact file format packs codes of
fewer than 8 bits into a bit stream, so stored sizes are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.quant.activations import ActSpec, fake_quantize_per_token, fake_quantize_static
from mmcompress.quant.observers import mse_clip_ratios
from mmcompress.quant.primitives import (
    affine_params,
    dequantize_affine,
    fake_quantize_dynamic_uint8,
    quantize_affine,
    to_groups,
)


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


class _QuantWeight(nn.Module):
    """Holds `qweight` (int8 codes), `scale` (out, G) and, when asymmetric, `zero_point` (out, G)."""

    grid: WeightGrid

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
        g = self.grid
        shape = "per-tensor" if g.per_tensor else f"group {g.group_size}" if g.group_size else "per-channel"
        return f"{tuple(self.qweight.shape)}, bits={g.bits}, {'sym' if g.symmetric else 'asym'}, {shape}"


class _ActivationQuant(nn.Module):
    """Input (activation) quantization shared by QuantLinear and QuantConv2d (W8A8)."""

    act: ActSpec | None = None  # W8A8: how inputs are quantized (None: weight-only)
    simulate_activations: bool = True  # export turns this off while tracing (the rewrite adds real kernels)

    def set_activations(self, spec: ActSpec | None, smooth: torch.Tensor | None = None) -> None:
        """Quantize inputs per `spec`; `smooth` (in,) multiplies inputs first (SmoothQuant 1/s).

        Static mode registers `act_step`/`act_zero` buffers, set by calibration (or a state dict).
        """
        self.act = spec
        if smooth is not None:
            self.register_buffer("act_smooth", smooth.detach().float().reshape(-1).clone())
        if spec is not None and spec.mode == "static":
            self.register_buffer("act_step", torch.tensor(1.0))
            self.register_buffer("act_zero", torch.tensor(0.0))

    @property
    def act_dynamic(self) -> bool:
        return self.act is not None and self.act.mode == "dynamic"

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input the integer kernel sees (smoothed, then quantized and dequantized)."""
        smooth = getattr(self, "act_smooth", None)
        if smooth is not None:  # Linear only: (in,) over the last dimension
            x = x * smooth.to(x.dtype)
        if self.act is None or not self.simulate_activations:
            return x
        if self.act.mode == "static":
            return fake_quantize_static(x, self.act_step, self.act_zero)
        if self.act.granularity == "per_token":
            return fake_quantize_per_token(x)
        return fake_quantize_dynamic_uint8(x)

    def _act_repr(self) -> str:
        act = "" if self.act is None else f", act={self.act.mode}/{self.act.granularity}"
        return act + (", smoothed" if hasattr(self, "act_smooth") else "")


class QuantLinear(_QuantWeight, _ActivationQuant):
    """Linear with integer weight codes; computes in float with the dequantized weight.

    Example:
        >>> q = QuantLinear.from_float(nn.Linear(8, 4), WeightGrid(bits=8))
        >>> q(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, layer: nn.Linear, grid: WeightGrid, params: tuple | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_quant(layer.weight, grid, params)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, layer: nn.Linear, grid: WeightGrid, params: tuple | None = None) -> QuantLinear:
        return cls(layer, grid, params).to(layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(self.quantize_input(x), self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._act_repr()


class QuantConv2d(_QuantWeight, _ActivationQuant):
    """Conv2d with integer weight codes (steps per output channel or per group of inputs).

    Example:
        >>> QuantConv2d.from_float(nn.Conv2d(1, 4, 3), WeightGrid())(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 4, 6, 6])
    """

    def __init__(self, conv: nn.Conv2d, grid: WeightGrid, params: tuple | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"Conv2d padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self._init_quant(conv.weight, grid, params)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, grid: WeightGrid, params: tuple | None = None) -> QuantConv2d:
        return cls(conv, grid, params).to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        w = self.dequantized_weight().to(x.dtype)
        return F.conv2d(self.quantize_input(x), w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._act_repr()


class QuantEmbedding(_QuantWeight):
    """Embedding with integer rows (steps per row or per group of columns); only looked-up rows are dequantized.

    Example:
        >>> QuantEmbedding.from_float(nn.Embedding(10, 4), WeightGrid())(torch.tensor([1, 2])).shape
        torch.Size([2, 4])
    """

    def __init__(self, emb: nn.Embedding, grid: WeightGrid, params: tuple | None = None) -> None:
        super().__init__()
        if emb.max_norm is not None or emb.sparse:
            raise ValueError("Embedding with max_norm or sparse gradients is not supported")
        self.padding_idx = emb.padding_idx
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self._init_quant(emb.weight, grid, params)

    @classmethod
    def from_float(cls, emb: nn.Embedding, grid: WeightGrid, params: tuple | None = None) -> QuantEmbedding:
        return cls(emb, grid, params).to(emb.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight)  # (..., D) int8
        n_groups = self.scale.shape[1]
        rows = rows.view(*ids.shape, n_groups, -1).float()  # (..., G, g)
        scale = F.embedding(ids, self.scale)[..., None]  # (..., G, 1)
        zero = F.embedding(ids, self._zero().float())[..., None]
        return ((rows - zero) * scale).view(*ids.shape, self.embedding_dim)


FLOAT_TO_QUANT: dict[type[nn.Module], type[_QuantWeight]] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
    nn.Embedding: QuantEmbedding,
}
QUANT_MODULES = tuple(FLOAT_TO_QUANT.values())
