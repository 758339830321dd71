"""One shared model walk: run calibration batches once and collect what the passes asked for.

Statistics are gathered with forward hooks on the named modules in a single pass over the data.
Every module asked for must see data: a tower that received none is an error, not a silently
uncalibrated tower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model, check_finite
from mmcompress.errors import DataError

Collector = Callable[[str, nn.Module, torch.Tensor], None]


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
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            check_finite(batch, "calibration")
            call_model(model, batch)
            used += 1
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
