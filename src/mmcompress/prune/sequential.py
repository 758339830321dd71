"""Sequential calibration for data-driven pruning (as in the SparseGPT and Wanda references):
layers are pruned in forward order, each calibrated on the inputs that the already-pruned
earlier layers produce, so errors do not compound unseen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmcompress.core.layer_stats import input_stats
from mmcompress.core.walker import run_calibration


def forward_order(model: nn.Module, layers: dict[str, nn.Module], batch: Any, modality_of: Callable) -> list[str]:
    """Layer names in the order the forward pass first calls them.

    Example:
        >>> forward_order(mlp, {"2": mlp[2], "0": mlp[0]}, x, str)
        ['0', '2']
    """
    order: list[str] = []
    run_calibration(model, layers, [batch], lambda name, m, x: order.append(name) if name not in order else None,
                    modality_of)  # fmt: skip
    return order


def sequential_plans(model, cfg, members, data, modality_of, max_batches, plan_group) -> dict[str, tuple]:
    """Plan each layer after the earlier ones are pruned; the model's weights are restored after.

    `plan_group(cfg, [(name, module)], stats)` returns {name: (mask, new weight or None)}.
    """
    data = list(data)
    layers = dict(members)
    saved = {name: module.weight.detach().clone() for name, module in members}
    plans: dict[str, tuple] = {}
    try:
        for name in forward_order(model, layers, data[0], modality_of):
            module = layers[name]
            hessian = cfg.method == "sparsegpt"
            stats = input_stats(model, {name: module}, data, modality_of, max_batches, hessian=hessian)
            mask, weight = plan_group(cfg, [(name, module)], stats)[name]
            plans[name] = (mask, weight)
            with torch.no_grad():
                module.weight.copy_(weight if weight is not None else module.weight * mask)
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                layers[name].weight.copy_(weight)
    return plans
