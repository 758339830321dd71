"""What a pass gets to work with, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.train.tasks import Task


@dataclass
class RunContext:
    """Shared state of a recipe run.

    Attributes:
        model: the model being compressed (edited in place by passes).
        task: builds batches, computes the loss and the metrics.
        train_data / test_data: datasets the task can index.
        output_dir: the run's folder; `stage_dir` is the current stage's folder.
        seed: the recipe seed; progress: show progress bars.
        original_model: a frozen copy of the model the recipe started from (kept only when a
            stage needs it, e.g. distillation's default teacher).
    """

    model: nn.Module
    task: Task
    train_data: Any
    test_data: Any
    output_dir: Path
    stage_dir: Path
    seed: int = 0
    progress: bool = True
    original_model: nn.Module | None = None

    def calibration_batches(self, samples: int, batch_size: int) -> list[Any]:
        """Model inputs from a seeded random subset of the training data."""
        return [inputs for inputs, _ in self.labelled_batches(samples, batch_size)]

    def labelled_batches(self, samples: int, batch_size: int) -> list[tuple[Any, Any]]:
        """(inputs, targets) pairs from the same seeded subset (for gradient-based importance)."""
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(self.train_data), generator=gen)[:samples]
        return [self.task.batch(self.train_data, order[s : s + batch_size]) for s in range(0, len(order), batch_size)]

    def batch_loss(self, model: Any, batch: tuple[Any, Any]) -> Any:
        """The task loss of one (inputs, targets) batch."""
        return self.task.loss(model, *batch)

    def example_batch(self, size: int = 8) -> Any:
        """A real batch of test inputs (for latency, export and agreement checks)."""
        n = min(size, len(self.test_data))
        inputs, _ = self.task.batch(self.test_data, torch.arange(n))
        return inputs


@dataclass
class StageOutcome:
    """Metrics a pass measured, its replayable record (if it changed the model), and artifacts."""

    metrics: dict[str, float] = field(default_factory=dict)
    record: Record | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
