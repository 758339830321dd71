"""LSTM / GRU with integer weight matrices: every `weight_ih_l*` / `weight_hh_l*` (/ `weight_hr_l*`) is
held as codes + a step per gate row (or group); biases stay float. Weight-only: the recurrence runs
PyTorch's own LSTM/GRU kernel on the dequantized matrices, so packed sequences, bidirectional and
stacked layers, `batch_first` and projections behave exactly like the float layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmcompress.quant.codes import QuantWeightTensor, WeightGrid


def rnn_weight_names(rnn: nn.RNNBase) -> list[str]:
    """The weight matrices of an LSTM/GRU in PyTorch's flat order (biases excluded).

    Example:
        >>> rnn_weight_names(nn.GRU(4, 8))
        ['weight_ih_l0', 'weight_hh_l0']
    """
    return [n for n in rnn._flat_weights_names if n.startswith("weight")]


def rnn_flat_weight(rnn: nn.Module) -> torch.Tensor:
    """All weight matrices of a float or quantized LSTM/GRU, flattened and concatenated (for error metrics).

    Example:
        >>> rnn_flat_weight(nn.GRU(4, 8)).numel()
        288
    """
    if isinstance(rnn, QuantRNN):
        return torch.cat([rnn.codes[n].dequantized_weight().reshape(-1) for n in rnn.weight_names])
    return torch.cat([getattr(rnn, n).detach().reshape(-1) for n in rnn_weight_names(rnn)])


class QuantRNN(nn.Module):
    """Base of QuantLSTM / QuantGRU: `codes[<weight name>]` holds each matrix, biases are parameters.

    The float layer's structure is kept as a parameter-free template on the meta device (not a
    submodule, so it is neither saved nor counted); forward runs it on the dequantized weights,
    which also traces for ONNX export (an ONNX LSTM/GRU with float weights).
    """

    float_type: type[nn.RNNBase] = nn.RNNBase

    def __init__(self, rnn: nn.RNNBase, grid: WeightGrid, params: dict | None = None) -> None:
        super().__init__()
        if type(rnn) is not self.float_type:
            raise ValueError(f"{type(self).__name__} quantizes {self.float_type.__name__}, got {type(rnn).__name__}")
        self.grid = grid
        self.weight_names = rnn_weight_names(rnn)
        self.bias_names = [n for n in rnn._flat_weights_names if n.startswith("bias")]
        params = params or {}
        self.codes = nn.ModuleDict(
            {n: QuantWeightTensor(getattr(rnn, n).detach(), grid, params.get(n)) for n in self.weight_names}
        )
        for n in self.bias_names:
            self.register_parameter(n, nn.Parameter(getattr(rnn, n).detach().clone(), requires_grad=False))
        self.batch_first, self.hidden_size = rnn.batch_first, rnn.hidden_size
        object.__setattr__(self, "_template", copy.deepcopy(rnn).to("meta"))  # structure only, no storage

    @classmethod
    def from_float(cls, rnn: nn.RNNBase, grid: WeightGrid, params: dict | None = None) -> QuantRNN:
        return cls(rnn, grid, params).to(next(rnn.parameters()).device)

    @property
    def bits(self) -> int:
        return self.grid.bits

    def dequantized_weight(self) -> torch.Tensor:
        """Every weight matrix, dequantized, flattened and concatenated."""
        return rnn_flat_weight(self)

    def forward(self, x, hx=None):
        dtype = x.data.dtype if isinstance(x, nn.utils.rnn.PackedSequence) else x.dtype
        weights = {n: self.codes[n].dequantized_weight().to(dtype) for n in self.weight_names}
        weights.update({n: getattr(self, n).to(dtype) for n in self.bias_names})
        template = self._template  # its forward reads `_flat_weights`; refs of None mean "unchanged"
        template._flat_weights = [weights[n] for n in template._flat_weights_names]
        template._flat_weight_refs = [None] * len(template._flat_weights_names)
        try:
            return template(x, hx)
        finally:
            template._flat_weights = []  # no reference to this call's tensors outlives it

    def extra_repr(self) -> str:
        return f"{len(self.weight_names)} matrices, {self.grid.describe()}"


class QuantLSTM(QuantRNN):
    """nn.LSTM with integer weight matrices (a step per gate row), weight-only.

    Example:
        >>> q = QuantLSTM.from_float(nn.LSTM(8, 16, batch_first=True), WeightGrid(bits=8))
        >>> q(torch.randn(2, 5, 8))[0].shape
        torch.Size([2, 5, 16])
    """

    float_type = nn.LSTM


class QuantGRU(QuantRNN):
    """nn.GRU with integer weight matrices (a step per gate row), weight-only.

    Example:
        >>> q = QuantGRU.from_float(nn.GRU(8, 16), WeightGrid(bits=8))
        >>> q(torch.randn(5, 2, 8))[0].shape
        torch.Size([5, 2, 16])
    """

    float_type = nn.GRU
