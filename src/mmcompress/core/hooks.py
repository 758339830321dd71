"""Step hooks: what a technique needs redone after every optimizer step of any training loop.

A technique attaches a hook to the module it changed (pruning: re-zero the masked weights); every
training loop (`fit`, distillation, QAT, a user's own loop) calls `run_step_hooks(model)` after
`optimizer.step()`. The loop knows nothing about the techniques; the hooks travel with the model
(deep copies included).

Example:
    >>> add_step_hook(layer, "prune_mask", lambda m: m.weight.data.mul_(m.weight_mask))
    >>> run_step_hooks(model)   # after optimizer.step()
    1
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

STEP_HOOKS = "_mmcompress_step_hooks"


def add_step_hook(module: nn.Module, key: str, hook: Callable[[nn.Module], None]) -> None:
    """Run `hook(module)` after every optimizer step (one hook per key: adding again replaces it)."""
    hooks = getattr(module, STEP_HOOKS, None)
    if hooks is None:
        hooks = {}
        object.__setattr__(module, STEP_HOOKS, hooks)
    hooks[key] = hook


def remove_step_hook(module: nn.Module, key: str) -> None:
    """Forget the hook `key` of `module` (no error when it has none)."""
    getattr(module, STEP_HOOKS, {}).pop(key, None)


@torch.no_grad()
def run_step_hooks(model: nn.Module) -> int:
    """Run every step hook of `model` and its submodules; returns how many ran."""
    count = 0
    for module in model.modules():
        for hook in list(getattr(module, STEP_HOOKS, {}).values()):
            hook(module)
            count += 1
    return count
