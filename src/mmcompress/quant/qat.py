"""Quantization-aware training: fake-quantized weights with a straight-through estimator and a
learned step size per output channel (LSQ, Esser et al. 2020), then conversion to integer codes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.record import Record
from mmcompress.quant.modules import QuantConv2d, QuantLinear, WeightGrid
from mmcompress.quant.primitives import code_range
from mmcompress.train.loop import fit


def lsq_fake_quant(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """round(clamp(w / s)) * s with STE for round and LSQ's gradient scale for s. (out, ...) -> same.

    Example:
        >>> lsq_fake_quant(torch.randn(4, 8), torch.full((4,), 0.1), 4).shape
        torch.Size([4, 8])
    """
    lo, hi = code_range(bits, symmetric=True)
    grad_scale = 1.0 / math.sqrt(w[0].numel() * hi)
    s = step * grad_scale + (step - step * grad_scale).detach()  # value s, gradient scaled
    s = s.view(-1, *([1] * (w.dim() - 1)))
    scaled = torch.clamp(w / s, lo, hi)
    rounded = scaled + (torch.round(scaled) - scaled).detach()  # straight-through estimator
    return rounded * s


class _QATWeight(nn.Module):
    """Wraps a float layer; `quant_enabled` switches the fake quantization (for float-vs-quantized loss)."""

    def __init__(self, layer: nn.Module, bits: int) -> None:
        super().__init__()
        self.layer, self.bits, self.quant_enabled = layer, bits, True
        _, hi = code_range(bits, symmetric=True)
        flat = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        init = 2 * flat.abs().mean(1) / math.sqrt(hi)  # LSQ initialisation
        self.step = nn.Parameter(init.clamp_min(1e-8))

    def weight(self) -> torch.Tensor:
        w = self.layer.weight
        return lsq_fake_quant(w, self.step.abs() + 1e-12, self.bits) if self.quant_enabled else w


class QATLinear(_QATWeight):
    """Linear trained through fake-quantized weights.

    Example:
        >>> QATLinear(nn.Linear(8, 4), bits=4)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.layer.bias)


class QATConv2d(_QATWeight):
    """Conv2d trained through fake-quantized weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.layer
        return F.conv2d(x, self.weight(), c.bias, c.stride, c.padding, c.dilation, c.groups)


QAT_FOR = {nn.Linear: QATLinear, nn.Conv2d: QATConv2d}


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def prepare_qat(model: nn.Module, bits: int, skip: tuple[str, ...] = ()) -> list[str]:
    """Wrap every Linear/Conv2d (except names in `skip`) for QAT; returns the wrapped names.

    Example:
        >>> names = prepare_qat(model, bits=4)
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    names = [n for n, m in model.named_modules() if type(m) in QAT_FOR and n not in skip]
    for name in names:
        module = model.get_submodule(name)
        _swap(model, name, QAT_FOR[type(module)](module, bits))
    return names


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch fake quantization of every QAT module on or off."""
    for module in model.modules():
        if isinstance(module, _QATWeight):
            module.quant_enabled = enabled


def convert_qat(model: nn.Module) -> Record:
    """Replace QAT modules by integer-code modules that hold the learned steps (exactly the trained grid).

    Example:
        >>> record = convert_qat(model)
    """
    record = Record("quantize", {"qat": True})
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, _QATWeight)]:
        layer, bits = module.layer, module.bits
        lo, hi = code_range(bits, symmetric=True)
        step = (module.step.detach().abs() + 1e-12).float()
        flat = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        codes = torch.clamp(torch.round(flat / step[:, None]), lo, hi).to(torch.int8)
        params = (codes, step[:, None], torch.zeros(len(step), 1, dtype=torch.int8))
        grid = WeightGrid(bits=bits)
        qmodule = (QuantLinear if isinstance(layer, nn.Linear) else QuantConv2d).from_float(layer, grid, params)
        _swap(model, name, qmodule)
        record.modules[name] = {
            "type": type(qmodule).__name__,
            "bits": bits,
            "method": "qat-lsq",
            "grid": {
                "bits": bits,
                "symmetric": True,
                "group_size": None,
                "per_tensor": False,
                "observer": "minmax",
                "clip_ratio": 1.0,
            },
            "activations": "none",
        }
    record.metrics["modules"] = float(len(record.modules))
    return record


def quantization_aware_training(model, task, train_data, config, bits: int, probe_data, skip=()):
    """Prepare QAT, train with `config` reporting float and quantized loss per epoch, convert to codes.

    Args:
        model: float model (edited in place).
        task: the training task; `probe_data` is a dataset whose first 512 samples measure the losses.
        config: a TrainConfig.
        bits: weight bits (2..8), symmetric, one learned step per output channel.
        skip: module names left in float.

    Returns:
        (Record of the converted layers, per-epoch history with `float_loss` and `quant_loss`).

    Example:
        >>> record, history = quantization_aware_training(model, task, train, TrainConfig(epochs=3), 3, test)
    """

    prepare_qat(model, bits, skip)
    probe = task.batch(probe_data, torch.arange(min(512, len(probe_data))))

    @torch.no_grad()
    def losses(m: nn.Module) -> dict[str, float]:
        m.eval()
        out = {}
        for label, enabled in (("float_loss", False), ("quant_loss", True)):
            set_quant_enabled(m, enabled)
            out[label] = float(task.loss(m, *probe))
        return out

    result = fit(model, task, train_data, config, progress=False, on_epoch_end=losses)
    return convert_qat(model), result.history
