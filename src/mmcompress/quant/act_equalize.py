"""Activation equalization for per-channel weights: rescale Conv -> [ReLU/ReLU6] -> Conv chains so
the activation between the two convs has (nearly) equal ranges per channel.

W8A8 quantizes a conv's input with one step per tensor but its weights with one step per output
channel. Cross-layer equalization (`equalize_cross_layer`) balances the two convs' *weight* ranges,
which per-channel weights do not need, and leaves the activation's channel ranges wherever that
puts them: one wide channel then sets the step of all, and narrow channels keep a few levels.
Here the scale comes from the activation instead (measured on calibration data), the move being
exact in float as in cross-layer equalization:

- second conv depthwise: its input channel i is its output channel i, whose weights have their own
  step, so the scale is free for weights: s_i = a_i / max(a), every channel gets the full range;
- second conv dense: column i of every output row is multiplied by s_i, which widens rows'
  ranges, so the migration is SmoothQuant's s_i = a_i^alpha / w_i^(1 - alpha) (w_i: the column's
  largest |weight|), scaled so the widest activation channel keeps its range.

The first conv's output channel i is divided by s_i: its own per-channel step follows. Pure math:
`activation_scales`; plumbing: `equalize_activations`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.core.walker import run_calibration
from mmcompress.errors import DataError, ModelError
from mmcompress.quant.equalize import equalization_pairs, input_ranges, rescale_pair
from mmcompress.quant.modules import QUANT_LAYERS

SCALE_LIMIT = 1e3  # no channel moves by more than this factor either way


def activation_scales(act_range: torch.Tensor, weight_range: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Per-channel s (divide the activation by it): (C,), (C,) or None (depthwise: free), alpha -> (C,).

    The widest activation channel keeps its range; dead channels (range 0) keep s = 1.

    Example:
        >>> activation_scales(torch.tensor([4.0, 1.0]), None, 0.5)
        tensor([1.0000, 0.2500])
    """
    a = act_range.float()
    alive = a > 0
    if not bool(alive.any()):
        return torch.ones_like(a)
    if weight_range is None:
        s = a / a.max()
    else:
        w = weight_range.float().clamp_min(1e-8)
        s = a.clamp_min(1e-8) ** alpha / w ** (1 - alpha)
        s = s * float((a / s)[alive].max() / a.max())  # max(a / s) == max(a)
    s = torch.where(alive, s, torch.ones_like(s))
    return s.clamp(1 / SCALE_LIMIT, SCALE_LIMIT)


def channel_ranges(
    model: nn.Module, layers: dict[str, nn.Conv2d], calib: Iterable[Any], max_batches: int | None = None
) -> dict[str, torch.Tensor]:
    """Largest |input| per input channel of each conv over the calibration batches: name -> (C,).

    Example:
        >>> channel_ranges(model, {"conv": model.conv}, [x])["conv"].shape
        torch.Size([16])
    """
    found: dict[str, torch.Tensor] = {}

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            raise DataError(f"calibration input of layer {name!r} holds NaN or Inf")
        amax = x.detach().abs().transpose(0, 1).reshape(x.shape[1], -1).amax(1).float()
        found[name] = torch.maximum(found[name], amax) if name in found else amax

    run_calibration(model, layers, calib, collect, max_batches=max_batches)
    return found


@torch.no_grad()
def equalize_activations(
    model: nn.Module, calib: Iterable[Any], alpha: float = 0.5, max_batches: int | None = None
) -> Record:
    """Rescale Conv -> [ReLU/ReLU6] -> Conv chains so each activation between them has equal
    per-channel ranges (depthwise second conv) or SmoothQuant-balanced ones (dense), in place.

    Exact in float (a ReLU6 between the convs becomes a per-channel clamp). Fold BatchNorm first;
    use it instead of `equalize_cross_layer` when weights are quantized per channel (W8A8).

    Args:
        model: float model in eval mode (no quantized layers yet).
        calib: calibration batches (the activations' channel ranges are measured on them).
        alpha: migration strength for dense second convs, in [0, 1] (0: activations unchanged).
        max_batches: use at most this many batches.

    Returns:
        Record with, per second conv, the spread (max/min) of its input's channel ranges before and after.

    Example:
        >>> fold_batchnorm(model.eval()); rec = equalize_activations(model, batches)
        >>> rec.metrics["pairs"]
        34.0
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise ModelError("equalize_activations works on the float model: run it before quantize")
    pairs = equalization_pairs(model)
    ranges = channel_ranges(model, {second: model.get_submodule(second) for _, _, second in pairs}, calib, max_batches)
    record = Record("equalize_activations", {"alpha": alpha})
    for pair in pairs:
        second = model.get_submodule(pair[2])
        a = ranges[pair[2]]
        depthwise = second.groups == second.in_channels and second.groups > 1
        s = activation_scales(a, None if depthwise else input_ranges(second), alpha)
        rescale_pair(model, pair, s)
        after = a / s
        record.modules[pair[2]] = {
            "from": pair[0],
            "activation": pair[1],
            "range_spread_before": _spread(a),
            "range_spread_after": _spread(after),
        }
    record.metrics["pairs"] = float(len(pairs))
    return record


def _spread(a: torch.Tensor) -> float:
    alive = a[a > 0]
    return float(alive.max() / alive.min()) if alive.numel() else 1.0
