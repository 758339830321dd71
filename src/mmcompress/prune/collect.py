"""Model plumbing for data-driven importance: gradients (taylor, fisher), input norms (wanda) and
input Hessians (sparsegpt), each gathered in one pass over the data."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import check_finite
from mmcompress.core.hessian import accumulate_hessian
from mmcompress.core.walker import layer_columns, run_calibration
from mmcompress.errors import DataError
from mmcompress.prune.importance import Stats

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def gradient_stats(
    model: nn.Module, params: dict[str, nn.Parameter], data: Iterable[Any], loss_fn: LossFn, max_batches: int | None
) -> dict[str, Stats]:
    """Accumulate |w * grad| and grad^2 per named parameter over `data` (frozen ones included).

    Example:
        >>> stats = gradient_stats(model, {"fc": model.fc.weight}, batches, lambda m, b: m(b[0]).sum(), 4)
    """
    stats = {name: Stats() for name in params}
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    model.eval()  # fixed BN statistics / no dropout: the scores describe the model as deployed
    try:
        for param in params.values():
            param.requires_grad_(True)
        for used, batch in enumerate(data):
            if max_batches is not None and used >= max_batches:
                break
            check_finite(batch, "importance")
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise DataError(f"the loss is {float(loss)} on importance batch {used}; cannot score weights")
            loss.backward()
            for name, param in params.items():
                if param.grad is None:
                    raise DataError(f"{name!r} got no gradient: the loss does not depend on it")
                stats[name].add_gradient(param, param.grad)
    finally:
        for name, param in params.items():
            param.requires_grad_(flags[name])
            param.grad = None
        model.train(was_training)
    if any(s.batches == 0 for s in stats.values()):
        raise DataError("importance data is empty; give at least one batch")
    return stats


def input_stats(
    model: nn.Module,
    layers: dict[str, nn.Module],
    data: Iterable[Any],
    modality_of: Callable,
    max_batches: int | None,
    hessian: bool = False,
) -> dict[str, Stats]:
    """Squared input norms per input feature (wanda) and, with `hessian`, 2 X X^T (sparsegpt).

    Both are per group of the layer (`core.walker.layer_columns`): norms (g, k), Hessians (g, k, k)
    with g = 1 for Linear and ungrouped Conv2d.
    """
    stats = {name: Stats() for name in layers}

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        cols = layer_columns(module, x.float())  # (g, rows, k)
        stats[name].add_inputs(cols)
        if hessian:
            g, _, k = cols.shape
            h, n = stats[name].extra.get("hessian", (torch.zeros(g, k, k, dtype=torch.float64), 0))
            stats[name].extra["hessian"] = accumulate_hessian(h, n, cols)

    run_calibration(model, layers, data, collect, modality_of, max_batches)
    return stats
