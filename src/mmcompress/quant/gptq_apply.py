"""Model plumbing for GPTQ: collect each target layer's input Hessian in one calibration pass,
then solve every layer with `gptq_quantize` (layers see float inputs: not sequential)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.walker import run_calibration
from mmcompress.errors import UnsupportedError
from mmcompress.quant.gptq import accumulate_hessian, gptq_quantize
from mmcompress.quant.modules import WeightGrid


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies its (out, in) weight with: Linear (..., in); Conv2d patches."""
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, C*k*k, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def check_gptq_supported(name: str, module: nn.Module) -> None:
    """GPTQ handles Linear and ungrouped Conv2d; anything else is an error naming the layer."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise UnsupportedError(f"GPTQ does not support grouped convolution {name!r} (groups={module.groups})")
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise UnsupportedError(f"GPTQ does not apply to {type(module).__name__} {name!r}")


def gptq_params(
    model: nn.Module,
    targets: dict[str, tuple[nn.Module, WeightGrid, Any]],
    calib: Iterable[Any],
    modality_of: Callable[[str], str | None],
    max_batches: int | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run GPTQ for every target layer: name -> (codes, steps, zero points).

    Args:
        model: the float model.
        targets: name -> (module, grid, gptq settings with block_size, damp, act_order).
        calib: calibration batches (every tower with a target must receive data).
        modality_of: tower names for coverage errors.
        max_batches: use at most this many batches.

    Example:
        >>> params = gptq_params(model, {"fc": (model.fc, WeightGrid(bits=4), GPTQConfig())}, batches, str)
    """
    for name, (module, _, _) in targets.items():
        check_gptq_supported(name, module)
    stats: dict[str, tuple[torch.Tensor, int]] = {}

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        cols = layer_columns(module, x.float())
        h, n = stats.get(name, (torch.zeros(cols.shape[1], cols.shape[1], dtype=torch.float64), 0))
        stats[name] = accumulate_hessian(h, n, cols)

    modules = {name: module for name, (module, _, _) in targets.items()}
    run_calibration(model, modules, calib, collect, modality_of, max_batches)
    out = {}
    for name, (module, grid, cfg) in targets.items():
        weight = module.weight.detach().reshape(module.weight.shape[0], -1)
        out[name] = gptq_quantize(
            weight, stats[name][0], grid.bits, grid.symmetric, grid.group_size,
            cfg.block_size, cfg.damp, cfg.act_order,
        )  # fmt: skip
    return out
