"""Gradual pruning (Zhu & Gupta, 2017): sparsity rises on a cubic schedule while the model trains,
masks are kept between steps, and the last epochs fine-tune at the final sparsity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mmcompress.core.record import Record
from mmcompress.core.targets import as_mapping
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import TrainResult, fit
from mmcompress.train.tasks import Task


def cubic_sparsity(step: int, final: float, end: int, start: int = 0, initial: float = 0.0) -> float:
    """s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3, clamped to [t0, t_end].

    Example:
        >>> [round(cubic_sparsity(t, 0.9, end=4), 3) for t in range(5)]
        [0.0, 0.52, 0.788, 0.886, 0.9]
    """
    if end <= start:
        return final
    progress = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def gradual_prune(
    model: nn.Module,
    task: Task,
    train_data: Any,
    train: TrainConfig,
    config: PruneConfig | Mapping[str, object],
    *,
    prune_epochs: int | None = None,
    progress: bool = True,
) -> tuple[Record, TrainResult]:
    """Train while pruning: before epoch e the targets get cubic_sparsity(e) of their final sparsity.

    Args:
        model: trained in place; masks stay attached.
        task, train_data, train: as for `fit` (`train.epochs` in total).
        config: PruneConfig or target mapping; each config's `sparsity` is the final one
            (magnitude importance: weights pruned earlier stay the smallest, so masks only grow).
        prune_epochs: epochs over which sparsity rises (default: all but the last third of training).

    Returns:
        The last prune Record and the training result (history with each epoch's sparsity).

    Example:
        >>> rec, result = gradual_prune(mlp, ClassificationTask(), train, TrainConfig(epochs=9), {"sparsity": 0.9})
    """
    mapping = as_mapping(config, PruneConfig)
    bad = [k for k, c in mapping.items() if c is not None and c.method != "magnitude"]
    if bad:
        raise ValueError(f"gradual pruning re-scores every epoch by magnitude; target {bad[0]!r} asks for another")
    end = prune_epochs if prune_epochs is not None else max(1, train.epochs - train.epochs // 3)
    state = {"epoch": 0, "record": None}

    def prune_to(epoch: int) -> dict[str, float]:
        fraction = cubic_sparsity(epoch, 1.0, end=end)
        scaled = {k: None if c is None else c.model_copy(update={"sparsity": c.sparsity * fraction})
                  for k, c in mapping.items()}  # fmt: skip
        state["record"] = prune(model, scaled)
        return {"sparsity": state["record"].metrics["sparsity"]}

    def on_epoch_end(trained: nn.Module) -> dict[str, float]:
        state["epoch"] += 1
        return prune_to(state["epoch"]) if state["epoch"] <= end else {}

    prune_to(0)
    result = fit(model, task, train_data, train, progress=progress, on_epoch_end=on_epoch_end)
    return state["record"], result
