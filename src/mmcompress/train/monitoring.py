"""Early stopping on a validation metric, and TensorBoard logging, for the training loop."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mmcompress.errors import ConfigError
from mmcompress.train.reference_tasks import LOWER_IS_BETTER


class EarlyStopping:
    """Tracks the best value of a validation metric and the weights of that epoch.

    Metrics whose name reads lower-is-better (loss, wer, error, kl, ...: `LOWER_IS_BETTER`) are
    minimised, the others maximised.

    Example:
        >>> stop = EarlyStopping("accuracy", patience=2)
        >>> [stop.update({"accuracy": a}, model) for a in (0.5, 0.6, 0.55, 0.58)]
        [False, False, False, True]
    """

    def __init__(self, metric: str, patience: int) -> None:
        self.metric, self.patience = metric, patience
        self.minimise = any(word in metric.lower() for word in LOWER_IS_BETTER)
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_entry: dict[str, float] | None = None  # that epoch's metrics (kept across a resume)
        self.bad_epochs = 0

    def update(self, entry: dict[str, float], model: nn.Module) -> bool:
        """Record one epoch's metrics; True when training should stop."""
        if self.metric not in entry:
            known = sorted(k for k in entry if k != "epoch")
            raise ConfigError(f"early stopping monitors {self.metric!r}, but validation reports {known}")
        value = float(entry[self.metric])
        better = self.best is None or (value < self.best if self.minimise else value > self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, int(entry["epoch"]), 0
            self.best_entry = dict(entry)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights back into `model`."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return copy.copy(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class TensorBoardLog:
    """Scalars to TensorBoard event files (loss and learning rate per step, metrics per epoch).

    Example:
        >>> log = TensorBoardLog("runs/kd")
        >>> log.scalars({"loss": 0.3}, step=10, prefix="train")
        >>> log.close()
    """

    def __init__(self, log_dir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log_dir asks for TensorBoard logs, but the tensorboard package is missing; "
                "run 'pip install tensorboard'"
            ) from None
        self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        for key, value in values.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
