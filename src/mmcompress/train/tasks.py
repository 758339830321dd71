"""Tasks: how a model kind turns a dataset into batches, a loss, and evaluation metrics."""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.batches import ModelCall, call_model, prediction
from mmcompress.evaluate.metrics import accuracy


class Task(abc.ABC):
    """Interface every task implements.

    Example:
        >>> task = ClassificationTask()
        >>> inputs, targets = task.batch(dataset, torch.arange(32))
        >>> loss = task.loss(model, inputs, targets)
    """

    primary_metric: str = "accuracy"
    higher_is_better: bool | None = True  # of the primary metric (None: known after the first evaluate)
    pass_defaults: dict[str, dict[str, Any]] = {}  # pass name -> settings a recipe stage takes unless it sets them

    @abc.abstractmethod
    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        """Build `(inputs, targets)` for the samples at `index`."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """Scalar training loss."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 512) -> dict[str, float]:
        """Metrics on a dataset; must include `primary_metric`."""

    def prepare(self, model: nn.Module) -> None:  # noqa: B027 - optional hook
        """Called once before training starts (e.g. to cache frozen features)."""

    def pass_data(self, pass_name: str, dataset: Any) -> Any:
        """The training data a recipe pass (`pass_name`, e.g. "finetune") works on: `dataset`
        itself unless the task knows a better form for that pass (a speech task packs short
        recordings into full windows for pruning and training, and calibrates on them one by one)."""
        return dataset

    def latency_call(self, dataset: Any) -> ModelCall | None:
        """What latency should time on this task's data instead of a forward pass on a batch (e.g.
        a speech recognizer's greedy transcription of one clip); None: a forward pass."""
        return None


class ClassificationTask(Task):
    """Items are `(inputs, label)` (or the set batches itself: `inputs(index)` and `labels`);
    cross-entropy loss; accuracy.

    Example:
        >>> ClassificationTask().evaluate(model, load_dataset("digits", "test"))
        {'accuracy': 0.97}
    """

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        if isinstance(dataset, torch.utils.data.Subset) and _vectorised(dataset.dataset):  # stays vectorised
            index = torch.as_tensor(dataset.indices)[index]
            return dataset.dataset.inputs(index), dataset.dataset.labels[index]
        if _vectorised(dataset):  # sets that batch themselves: `inputs(index)` and `labels`
            return dataset.inputs(index), dataset.labels[index]
        items = [dataset[int(i)] for i in index]
        return torch.utils.data.default_collate(items)

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        return F.cross_entropy(prediction(call_model(model, inputs)).float(), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 512) -> dict[str, float]:
        logits, labels = predict_all(self, model, dataset, batch_size)
        return {"accuracy": accuracy(logits, labels)}


def _vectorised(dataset: Any) -> bool:
    return callable(getattr(dataset, "inputs", None)) and hasattr(dataset, "labels")


def predict_all(task: Task, model: nn.Module, dataset: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, labels = [], []
    for start in range(0, len(dataset), batch_size):
        inputs, targets = task.batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))))
        outs.append(prediction(call_model(model, inputs)).float().cpu())
        labels.append(targets)
    return torch.cat(outs), torch.cat(labels)
