"""Modules that store weights as real int8 codes + per-channel float scales (weight-only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.quant.primitives import dequantize_symmetric, quantize_symmetric, symmetric_scale


class _QuantWeight(nn.Module):
    """Holds `qweight` (int8) and `scale` (float32, one per output channel / row)."""

    bits: int

    def _init_quant(self, weight: torch.Tensor, bits: int) -> None:
        scale = symmetric_scale(weight, bits, axis=0)
        self.register_buffer("qweight", quantize_symmetric(weight, scale, bits, axis=0))
        self.register_buffer("scale", scale)
        self.bits = bits

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the module computes with: codes * step."""
        return dequantize_symmetric(self.qweight, self.scale, axis=0)

    def extra_repr(self) -> str:
        return f"{tuple(self.qweight.shape)}, bits={self.bits}"


class QuantLinear(_QuantWeight):
    """Linear with int8 weight codes; computes in float with the dequantized weight.

    Example:
        >>> q = QuantLinear.from_float(nn.Linear(8, 4), bits=8)
        >>> q(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_quant(torch.zeros(out_features, in_features), bits)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, layer: nn.Linear, bits: int) -> QuantLinear:
        q = cls(layer.in_features, layer.out_features, layer.bias is not None, bits)
        q._init_quant(layer.weight.detach(), bits)
        if layer.bias is not None:
            q.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        return q.to(layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class QuantConv2d(_QuantWeight):
    """Conv2d with int8 weight codes (per output channel).

    Example:
        >>> QuantConv2d.from_float(nn.Conv2d(1, 4, 3), bits=8)(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 4, 6, 6])
    """

    def __init__(self, conv: nn.Conv2d, bits: int = 8) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups, self.padding_mode = conv.groups, conv.padding_mode
        if conv.padding_mode != "zeros":
            raise ValueError(f"Conv2d padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        self._init_quant(conv.weight.detach(), bits)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> QuantConv2d:
        return cls(conv, bits).to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        w = self.dequantized_weight().to(x.dtype)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)


class QuantEmbedding(_QuantWeight):
    """Embedding with int8 rows (one scale per row): only looked-up rows are dequantized.

    Example:
        >>> QuantEmbedding.from_float(nn.Embedding(10, 4), bits=8)(torch.tensor([1, 2])).shape
        torch.Size([2, 4])
    """

    def __init__(self, emb: nn.Embedding, bits: int = 8) -> None:
        super().__init__()
        self.padding_idx = emb.padding_idx
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self._init_quant(emb.weight.detach(), bits)

    @classmethod
    def from_float(cls, emb: nn.Embedding, bits: int) -> QuantEmbedding:
        if emb.max_norm is not None or emb.sparse:
            raise ValueError("Embedding with max_norm or sparse gradients is not supported")
        return cls(emb, bits).to(emb.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight)  # (..., D) int8
        return rows.float() * F.embedding(ids, self.scale[:, None])


FLOAT_TO_QUANT: dict[type[nn.Module], type[_QuantWeight]] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
    nn.Embedding: QuantEmbedding,
}
QUANT_MODULES = tuple(FLOAT_TO_QUANT.values())
