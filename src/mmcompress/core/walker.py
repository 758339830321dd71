"""One shared model walk: run calibration batches once and collect what the passes asked for.

Statistics are gathered with forward hooks on the named modules in a single pass over the data.
Every module asked for must see data: a tower that received none is an error, not a silently
uncalibrated tower. `layer_columns` and `grouped_weight` give a Linear or (grouped) Conv2d the
common form of `groups` independent matrix products, which GPTQ, SparseGPT, Wanda and the error
analysis all work on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.batches import call_model, check_finite
from mmcompress.errors import DataError

Collector = Callable[[str, nn.Module, torch.Tensor], None]


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows each group of the layer multiplies its weight with: (groups, rows, in per group).

    Linear: x (..., in) -> (1, rows, in). Conv2d with `groups` g: the input patches, unfolded
    with the layer's padding, stride and dilation, split by group:
    (B, C, H, W) -> (g, B * L, C / g * kh * kw), column order matching `grouped_weight`.
    Conv1d: the same, as a Conv2d of height 1: (B, C, T) -> (g, B * L, C / g * k).

    Example:
        >>> layer_columns(nn.Conv2d(4, 4, 3, groups=4), torch.randn(2, 4, 8, 8)).shape
        torch.Size([4, 72, 9])
    """
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return x.reshape(1, -1, x.shape[-1])
    padding = module.padding
    if isinstance(padding, str):  # "valid" or "same": pad explicitly, as F.conv2d does
        x = _pad_same(x, module) if padding == "same" else x
        padding = (0,) * len(module.kernel_size)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):  # a row of height 1
        x, kernel, dilation, padding, stride = (x.unsqueeze(2), (1, *kernel), (1, *dilation), (0, *padding),
                                                 (1, *stride))  # fmt: skip
    patches = F.unfold(x, kernel, dilation, padding, stride)  # (B, C*kh*kw, L)
    b, ck, length = patches.shape
    g = module.groups
    grouped = patches.view(b, g, ck // g, length)  # channels of a group are contiguous
    return grouped.permute(1, 0, 3, 2).reshape(g, b * length, ck // g)


def grouped_weight(module: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A Linear (out, in), Conv1d (out, in / g, k) or Conv2d (out, in / g, kh, kw) weight as
    (g, out / g, in / g * kernel taps).

    Example:
        >>> grouped_weight(nn.Conv2d(4, 8, 3, groups=4)).shape
        torch.Size([4, 2, 9])
    """
    w = module.weight if weight is None else weight
    g = module.groups if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1
    return w.reshape(g, w.shape[0] // g, -1)


def _pad_same(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """Zero-pad (B, C, H, W) / (B, C, T) as padding="same" does (the odd extra pixel goes right/bottom)."""
    pads = []
    for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


@torch.no_grad()
def run_calibration(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batches: Iterable[Any],
    collect: Collector,
    modality_of: Callable[[str], str | None] = lambda name: None,
    max_batches: int | None = None,
) -> int:
    """Feed `batches` through `model`, calling `collect(name, module, input)` for each named module.

    Args:
        model: the model (run in eval mode).
        modules: name -> module whose first positional input is collected.
        batches: calibration inputs following the batch convention.
        collect: receives each module's input tensor.
        modality_of: names the tower of a module in error messages.
        max_batches: stop after this many batches.

    Returns:
        The number of batches used.

    Example:
        >>> run_calibration(model, {"fc": model.fc}, batches, lambda n, m, x: print(n, x.shape))
    """
    calls = dict.fromkeys(modules, 0)

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            calls[name] += 1
            collect(name, module, x.detach())

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        used = forward_batches(model, batches, max_batches, "calibration")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if used == 0:
        raise DataError("calibration data is empty; give at least one batch")
    _check_coverage(calls, modality_of)
    return used


def _check_coverage(calls: dict[str, int], modality_of: Callable[[str], str | None]) -> None:
    starved = [name for name, count in calls.items() if count == 0]
    if not starved:
        return
    towers = sorted({modality_of(n) or "untagged" for n in starved})
    raise DataError(
        f"calibration never reached {len(starved)} module(s) to quantize (towers: {', '.join(towers)}; "
        f"first: {starved[0]}); give calibration batches that carry every modality"
    )


def forward_batches(model: nn.Module, batches: Iterable[Any], max_batches: int | None, what: str) -> int:
    """Run `model` on each batch (at most `max_batches`), checking inputs are finite; returns how many ran.

    Example:
        >>> forward_batches(model, [x1, x2], None, "calibration")
        2
    """
    used = 0
    for batch in batches:
        if max_batches is not None and used >= max_batches:
            break
        check_finite(batch, what)
        call_model(model, batch)
        used += 1
    return used
