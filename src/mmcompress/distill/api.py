"""`distill(teacher, student, train_data, config)`: train a student against a frozen teacher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.distill.config import DistillConfig
from mmcompress.distill.task import (
    DistillationTask,
    StudentWithProjections,
    captured_attention,
    captured_outputs,
    projection_key,
)
from mmcompress.errors import ConfigError, DataError
from mmcompress.train.embedding_task import EmbeddingTask
from mmcompress.train.loop import TrainResult, fit
from mmcompress.train.tasks import ClassificationTask, Task


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_data: Any,
    config: DistillConfig | Mapping[str, Any] | None = None,
    *,
    task: Task | None = None,
    val_data: Any = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `student` in place to match `teacher` (logits, or the image-text similarities of a dual
    encoder), mixed with the task's own loss, plus optional feature matching.

    Runs on the foundation's training loop: AMP, gradient clipping, per-epoch checkpoints with
    resume, rich progress and torchrun data parallelism all apply.

    Args:
        teacher: frozen during training (no gradients, eval mode).
        student: trained in place (its inputs are the teacher's inputs); every parameter trains
            except those `config.train.freeze` names.
        train_data: a dataset the task can index.
        config: DistillConfig or a dict of its fields.
        task: batches, the hard-label loss and metrics (default: classification). A task that
            gives `embeddings(model, inputs, targets)` (a dual encoder's image and text embeddings)
            is distilled contrastively; `frozen_embedder(teacher)` lets it cache the teacher's side.
        val_data: evaluated after every epoch; with `train.early_stopping` also before training,
            and the best epoch's student weights are kept (epoch 0: the student as it came, so a
            repair never ends worse on this data than it started).
        checkpoint_dir: per-epoch checkpoints (resumed when present).

    Example:
        >>> distill(teacher, student, load_dataset("fashion-mnist"), {"temperature": 4, "alpha": 0.9})
    """
    if config is None:
        config = DistillConfig()
    elif not isinstance(config, DistillConfig):
        config = DistillConfig.from_dict(dict(config))
    if len(train_data) == 0:
        raise DataError("distillation data is empty")
    for param in student.parameters():  # the student learns, even where it was copied from a frozen tower
        param.requires_grad_(True)
    task = task or ClassificationTask()
    if isinstance(task, EmbeddingTask) and config.mode not in ("auto", "embedding"):
        raise ConfigError(f"a sentence-embedding task has no labels or logits: use mode 'embedding' ({config.mode!r})")
    projections = _projections(teacher, student, task, train_data, config)
    model: nn.Module = StudentWithProjections(student, projections) if config.features else student
    train = config.train
    if config.features and train.freeze:
        train = train.model_copy(update={"freeze": tuple(f"student.{f}" for f in train.freeze)})
    kd_task = DistillationTask(task, teacher, config)
    return fit(model, kd_task, train_data, train, val_data=val_data, checkpoint_dir=checkpoint_dir, progress=progress)


def _probe(model: nn.Module, inputs: Any, features: list[str], attentions: list[str]) -> dict[str, torch.Size]:
    """Output shapes of the named feature modules and attention maps in one eval-mode forward pass."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    was_training = model.training
    with (
        torch.no_grad(),
        captured_outputs(model, features) as feats,
        captured_attention(model, attentions, mask) as maps,
    ):
        call_model(model.eval(), inputs)
        shapes = {name: feats[name].shape for name in features}
        shapes.update({f"attention:{name}": maps(name).shape for name in attentions})
    model.train(was_training)
    return shapes


def _projections(teacher, student, task, data, config: DistillConfig) -> nn.ModuleDict:
    """Check feature and attention pairs on one real batch; a Linear per feature pair whose widths
    differ (Identity otherwise)."""
    if not config.features and not config.attentions:
        return nn.ModuleDict()
    inputs, _ = task.batch(data, torch.arange(min(2, len(data))))
    t_shapes = _probe(teacher, inputs, list(config.features.values()), list(config.attentions.values()))
    s_shapes = _probe(student, inputs, list(config.features), list(config.attentions))
    for s_name, t_name in config.attentions.items():
        s_shape, t_shape = s_shapes[f"attention:{s_name}"], t_shapes[f"attention:{t_name}"]
        if s_shape != t_shape:
            raise ConfigError(
                f"student attention {s_name!r} gives maps {tuple(s_shape)} but teacher {t_name!r} gives "
                f"{tuple(t_shape)} (batch, heads, queries, keys); map layers with the same number of heads"
            )
    layers = {}
    for s_name, t_name in config.features.items():
        s_shape, t_shape = s_shapes[s_name], t_shapes[t_name]
        if s_shape[:-1] != t_shape[:-1]:
            raise ConfigError(
                f"student {s_name!r} gives {tuple(s_shape)} but teacher {t_name!r} gives {tuple(t_shape)}: only "
                "the last (feature) dimension may differ; map layers whose other dimensions agree"
            )
        d_s, d_t = s_shape[-1], t_shape[-1]
        layers[projection_key(s_name)] = nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity()
    return nn.ModuleDict(layers)
