"""Layers that store weights as integer codes + float steps (+ zero points), and the float -> quantized map.

Linear and Conv1d/Conv2d optionally quantize their inputs too (W8A8); LSTM/GRU (`recurrent.py`)
and Embedding are weight-only.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.quant.activations import (
    ActSpec,
    fake_quantize_per_token,
    fake_quantize_static,
    fake_quantize_static_ste,
)
from mmcompress.quant.codes import (
    QuantWeightTensor,
    WeightGrid,
    _QuantWeight,
    quantize_weight,  # noqa: F401  (re-exported: callers import it from here)
)
from mmcompress.quant.fused_codes import fused
from mmcompress.quant.integer_sim import exact_static, integer_layer, linear_op
from mmcompress.quant.kernel_select import choose_kernel
from mmcompress.quant.kernels import INTEGER_KERNELS, SIBLINGS, float_weight, gemv_linear, integer_linear
from mmcompress.quant.primitives import fake_quantize_dynamic_uint8
from mmcompress.quant.recurrent import QuantGRU, QuantLSTM


class ActivationQuant(nn.Module):
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
        """The input the integer kernel sees (smoothed, then quantized and dequantized); under
        autograd the rounding is straight-through (gradients pass; static codes clamped at 0 or 255
        pass none), so layers before a W8A8 layer still train."""
        smooth = getattr(self, "act_smooth", None)
        if smooth is not None:  # Linear only: (in,) over the last dimension
            x = x * smooth.to(x.dtype)
        if self.act is None or not self.simulate_activations:
            return x
        straight_through = x.requires_grad and torch.is_grad_enabled()  # rounding passes gradients on
        if self.act.mode == "static":
            quantize = fake_quantize_static_ste if straight_through else fake_quantize_static
            return quantize(x, self.act_step, self.act_zero)
        q = fake_quantize_per_token(x) if self.act.granularity == "per_token" else fake_quantize_dynamic_uint8(x)
        return x + (q - x).detach() if straight_through else q  # dynamic ranges cover every value: no clamp

    def cached_path_input(self, x: torch.Tensor) -> torch.Tensor:
        """`quantize_input(x)` for the cached-weight path (no autograd there): dynamic per-tensor float32
        inputs take their codes from `fused_codes` (the same integers and values in fewer passes:
        56 us instead of 99 us at 64 x 384), everything else `quantize_input`."""
        act = self.act
        if act is None or act.mode != "dynamic" or act.granularity != "per_tensor" or x.dtype != torch.float32:
            return self.quantize_input(x)
        if not self.simulate_activations:
            return self.quantize_input(x)
        codes, step, zero = fused("tensor", x, self._buffers.get("act_smooth"))
        return codes.float().sub_(zero).mul_(step)

    def _act_repr(self) -> str:
        act = "" if self.act is None else f", act={self.act.mode}/{self.act.granularity}"
        return act + (", smoothed" if hasattr(self, "act_smooth") else "")


class QuantLinear(_QuantWeight, ActivationQuant):
    """Linear with integer weight codes. `kernel` ("auto", "simulate", "cache", "onednn", "int_mm";
    see `quant/kernels.py`) picks how it computes: W8A8 dynamic layers on int8 GEMMs, weight-only
    layers with a cached dequantized weight; "simulate" dequantizes on every call (the reference).

    Example:
        >>> q = QuantLinear.from_float(nn.Linear(8, 4), WeightGrid(bits=8))
        >>> q(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    post_act: str | None = None  # "gelu"/"gelu_tanh": the int8 kernel applies the next GELU (fuse_act.py)

    def __init__(self, layer: nn.Linear, grid: WeightGrid, params: tuple | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_quant(layer.weight, grid, params)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, layer: nn.Linear, grid: WeightGrid, params: tuple | None = None) -> QuantLinear:
        return cls(layer, grid, params).to(layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is None and "act_smooth" not in self._buffers:  # weight-only: lean path (decoders, M = 1)
            kernel = choose_kernel(self, x)
            if kernel == "gemv":
                y = gemv_linear(self, x)
                if y is not None:
                    return y
                kernel = "cache"
            w = float_weight(self, x.dtype) if kernel == "cache" else self.dequantized_weight().to(x.dtype)
            bias = self.bias if self.bias is None or self.bias.dtype == x.dtype else self.bias.to(x.dtype)
            return F.linear(x, w, bias)
        if exact_static(self, x):  # the integers and float32 rounding ONNX Runtime's MatMulInteger chain uses
            smooth = getattr(self, "act_smooth", None)
            x = x if smooth is None else x * smooth.to(x.dtype)
            return integer_layer(x, self.act_step, self.act_zero, self.qweight, self.scale, self.bias, linear_op)
        kernel = choose_kernel(self, x)
        if kernel in INTEGER_KERNELS:
            group = self.__dict__.get(SIBLINGS)  # query/key/value: one joint GEMM (siblings.py)
            y = group.run(self, x) if group is not None and kernel == "onednn" else None
            return integer_linear(self, x, kernel) if y is None else y
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if kernel == "cache":
            return F.linear(self.cached_path_input(x), float_weight(self, x.dtype), bias)
        return F.linear(self.quantize_input(x), self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        fused = f", fused {self.post_act}" if self.post_act else ""
        return super().extra_repr() + self._act_repr() + fused


class _QuantConv(_QuantWeight, ActivationQuant):
    """Conv1d/Conv2d with integer weight codes (steps per output channel or per group of inputs)."""

    float_type: type[nn.Module] = nn.Conv2d

    def __init__(self, conv: nn.Module, grid: WeightGrid, params: tuple | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"{type(conv).__name__} padding_mode {conv.padding_mode!r} is not supported (only 'zeros')"
            )
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self._init_quant(conv.weight, grid, params)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_float(cls, conv: nn.Module, grid: WeightGrid, params: tuple | None = None) -> _QuantConv:
        return cls(conv, grid, params).to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.qweight.dim() == 3 else F.conv2d
        if exact_static(self, x):  # the integers and float32 rounding ONNX Runtime's ConvInteger chain uses
            op = partial(conv, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
            return integer_layer(x, self.act_step, self.act_zero, self.qweight, self.scale, self.bias, op)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if choose_kernel(self, x) == "cache":
            w, x = float_weight(self, x.dtype), self.cached_path_input(x)
        else:
            w, x = self.dequantized_weight().to(x.dtype), self.quantize_input(x)
        return conv(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._act_repr()


class QuantConv2d(_QuantConv):
    """Conv2d with integer weight codes (steps per output channel or per group of inputs).

    Example:
        >>> QuantConv2d.from_float(nn.Conv2d(1, 4, 3), WeightGrid())(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 4, 6, 6])
    """


class QuantConv1d(_QuantConv):
    """Conv1d with integer weight codes (audio front ends such as Whisper's conv1/conv2); weight-only.

    Example:
        >>> QuantConv1d.from_float(nn.Conv1d(2, 4, 3), WeightGrid())(torch.randn(1, 2, 8)).shape
        torch.Size([1, 4, 6])
    """

    float_type = nn.Conv1d


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
        if choose_kernel(self, ids) == "cache":  # the cached float table: one lookup
            return F.embedding(ids, float_weight(self, torch.float32), self.padding_idx)
        rows = F.embedding(ids, self.qweight)  # (..., D) int8
        n_groups = self.scale.shape[1]
        rows = rows.view(*ids.shape, n_groups, -1).float()  # (..., G, g)
        scale = F.embedding(ids, self.scale)[..., None]  # (..., G, 1)
        zero = F.embedding(ids, self._zero().float())[..., None]
        return ((rows - zero) * scale).view(*ids.shape, self.embedding_dim)


FLOAT_TO_QUANT: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
    nn.Conv1d: QuantConv1d,
    nn.Embedding: QuantEmbedding,
    nn.LSTM: QuantLSTM,
    nn.GRU: QuantGRU,
}
QUANT_LAYERS = tuple(FLOAT_TO_QUANT.values())  # what `quantize` puts in place of a float layer
QUANT_MODULES = (QuantLinear, QuantConv2d, QuantConv1d, QuantEmbedding, QuantWeightTensor)  # hold codes + steps
