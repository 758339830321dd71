"""Per-layer statistics gathered from data in one pass: gradients (taylor, fisher; mixed-precision
sensitivity), input norms (wanda) and input Hessians (sparsegpt), with the `Stats` they fill."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import check_finite
from mmcompress.core.hessian import accumulate_hessian
from mmcompress.core.walker import layer_columns, run_calibration
from mmcompress.errors import DataError

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class Stats:
    """What data-driven criteria accumulate for one layer.

    Attributes:
        grad_product: sum over batches of |w * grad| (taylor).
        grad_square: sum over batches of grad^2 (fisher).
        batches: how many gradient batches were accumulated.
        input_sq_norm: (in,) sum of squared inputs per input feature, or (g, in / g * kh * kw)
            per group of a grouped convolution (wanda).
    """

    grad_product: torch.Tensor | None = None
    grad_square: torch.Tensor | None = None
    batches: int = 0
    input_sq_norm: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def add_gradient(self, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """Accumulate one batch's gradient of the loss with respect to `weight`.

        Example:
            >>> s = Stats(); s.add_gradient(torch.ones(2, 2), torch.full((2, 2), 0.5)); s.batches
            1
        """
        w, g = weight.detach().float(), grad.detach().float()
        product, square = (w * g).abs(), g * g
        self.grad_product = product if self.grad_product is None else self.grad_product + product
        self.grad_square = square if self.grad_square is None else self.grad_square + square
        self.batches += 1

    def add_inputs(self, columns: torch.Tensor) -> None:
        """Accumulate squared input features: columns (n, in), or (g, n, k) per group, as the layer
        multiplies them (`core.walker.layer_columns`)."""
        sq = columns.detach().float().pow(2).sum(-2)  # (in,) or (g, k)
        self.input_sq_norm = sq if self.input_sq_norm is None else self.input_sq_norm + sq


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
