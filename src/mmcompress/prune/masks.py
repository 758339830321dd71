"""Pruning masks kept as non-persistent `weight_mask` buffers and re-applied after each update
(a step hook on the masked module: every training loop re-zeros pruned weights)."""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.core.hooks import add_step_hook

MASK_HOOK = "prune_mask"


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Attach (or replace) a bool mask on `module.weight` and zero the pruned weights.

    Example:
        >>> layer = nn.Linear(4, 4)
        >>> set_mask(layer, layer.weight.abs() > 0.1)
    """
    if mask.shape != module.weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    mask = mask.to(device=module.weight.device, dtype=torch.bool)
    if hasattr(module, "weight_mask"):
        module.weight_mask = mask
    else:
        module.register_buffer("weight_mask", mask, persistent=False)
    add_step_hook(module, MASK_HOOK, _reapply)
    with torch.no_grad():
        module.weight.mul_(mask)


@torch.no_grad()
def _reapply(module: nn.Module) -> None:
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor) and isinstance(getattr(module, "weight", None), torch.Tensor):
        module.weight.mul_(mask)


@torch.no_grad()
def apply_masks(model: nn.Module) -> int:
    """Zero masked weights in every module that carries a mask; returns how many modules.

    Example:
        >>> apply_masks(model)  # after optimizer.step()
        12
    """
    count = 0
    for module in model.modules():
        mask = getattr(module, "weight_mask", None)
        if isinstance(mask, torch.Tensor) and isinstance(getattr(module, "weight", None), torch.Tensor):
            module.weight.mul_(mask)
            count += 1
    return count


def masks_from_zeros(model: nn.Module, names: list[str]) -> None:
    """Rebuild masks from the zeros of the named modules' weights (after loading a checkpoint)."""
    modules = dict(model.named_modules())
    for name in names:
        weight = getattr(modules.get(name), "weight", None)
        if isinstance(weight, torch.nn.Parameter):  # quantized since: codes keep the zeros themselves
            set_mask(modules[name], weight != 0)
