"""Model plumbing for GPTQ: collect each target layer's input Hessian in one calibration pass,
then solve every layer with `gptq_quantize` (layers see float inputs: not sequential).

A Conv2d with `groups` g is g independent layers: each group's Hessian covers its own
(in / g * kh * kw) unfolded input columns, and the g problems are solved in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.progress import tracked
from mmcompress.core.walker import grouped_weight, layer_columns, run_calibration
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.quant.gptq import accumulate_hessian, gptq_quantize
from mmcompress.quant.modules import WeightGrid


def check_gptq_supported(name: str, module: nn.Module) -> None:
    """GPTQ handles Linear, Conv1d and Conv2d (grouped and depthwise too); anything else is an error
    naming the layer."""
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        raise UnsupportedError(f"GPTQ does not apply to {type(module).__name__} {name!r}")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
        kind = type(module).__name__
        raise UnsupportedError(f"GPTQ needs zero padding; {kind} {name!r} pads with {module.padding_mode!r}")


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
        cols = layer_columns(module, x.float())  # (g, rows, k)
        g, _, k = cols.shape
        h, n = stats.get(name, (torch.zeros(g, k, k, dtype=torch.float64), 0))
        stats[name] = accumulate_hessian(h, n, cols)

    modules = {name: module for name, (module, _, _) in targets.items()}
    run_calibration(model, modules, calib, collect, modality_of, max_batches)
    out = {}
    for name, (module, grid, cfg) in tracked(targets.items(), "GPTQ layers"):
        weight = grouped_weight(module).detach()  # (g, out / g, k)
        try:
            codes, scale, zero = gptq_quantize(
                weight, stats[name][0], grid.bits, grid.symmetric, grid.group_size,
                cfg.block_size, cfg.damp, cfg.act_order, grid.observer, grid.clip_ratio,
            )  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"layer {name!r} ({type(module).__name__}): {err}") from None
        rows = module.weight.shape[0]
        out[name] = (codes.reshape(rows, -1), scale.reshape(rows, -1), zero.reshape(rows, -1))
    return out
