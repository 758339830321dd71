"""DistillationTask: wraps a task so the foundation's training loop (AMP, torchrun, checkpoints,
progress) trains a student against a frozen teacher."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.distill.config import DistillConfig
from mmcompress.distill.losses import contrastive_kd, feature_kd, logit_kd
from mmcompress.errors import ModelError
from mmcompress.train.tasks import ContrastiveTask, Task


class StudentWithProjections(nn.Module):
    """The student plus the learnable projections of feature distillation (trained together).

    Example:
        >>> wrapped = StudentWithProjections(student, nn.ModuleDict({"blocks_0": nn.Linear(32, 64)}))
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleDict) -> None:
        super().__init__()
        self.student, self.projections = student, projections

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # tokenize, encode_image, logit_scale ... of the student
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("student"), name)


def unwrap(model: nn.Module) -> nn.Module:
    return model.student if isinstance(model, StudentWithProjections) else model


def projection_key(name: str) -> str:
    return name.replace(".", "_") or "_root"


@contextmanager
def captured_outputs(model: nn.Module, names: list[str]):
    """Record the (first tensor) output of each named submodule during the forward passes inside."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ModelError(f"{type(model).__name__} has no module {missing[0]!r} for feature distillation")
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(module, args, out, name=name):
            outputs[name] = out[0] if isinstance(out, (tuple, list)) else out

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class DistillationTask(Task):
    """The base task's batches and metrics; the loss mixes distillation and the task's own loss.

    Example:
        >>> task = DistillationTask(ClassificationTask(), teacher, DistillConfig(temperature=4))
        >>> fit(student, task, train, TrainConfig(epochs=3))
    """

    def __init__(self, base: Task, teacher: nn.Module, config: DistillConfig) -> None:
        self.base, self.teacher, self.config = base, teacher.eval(), config
        self.primary_metric = base.primary_metric
        for p in teacher.parameters():
            p.requires_grad_(False)

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        return self.base.batch(dataset, index)

    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 512) -> dict[str, float]:
        return self.base.evaluate(unwrap(model), dataset, batch_size)

    def prepare(self, model: nn.Module) -> None:
        self.teacher.eval()

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        cfg, student = self.config, unwrap(model)
        s_names, t_names = list(cfg.features), list(cfg.features.values())
        with captured_outputs(self.teacher, t_names) as t_feats, torch.no_grad():
            t_out = call_model(self.teacher, inputs)
        with captured_outputs(student, s_names) as s_feats:
            s_out = call_model(student, inputs)
        contrastive = cfg.mode == "contrastive" or (cfg.mode == "auto" and isinstance(s_out, (tuple, list)))
        hard_weight = 0.0 if cfg.unlabeled else 1.0 - cfg.alpha
        if contrastive:
            loss = contrastive_kd(*s_out[:2], *t_out[:2], cfg.temperature, feature_weight=cfg.mimic_weight)
            loss = (1.0 - hard_weight) * loss
            if hard_weight:
                loss = loss + hard_weight * self._contrastive_hard(student, s_out, targets)
        else:
            loss = logit_kd(s_out, t_out, None if cfg.unlabeled else targets, cfg.temperature, cfg.alpha)
        for s_name, t_name in cfg.features.items():
            projection = (
                model.projections[projection_key(s_name)] if isinstance(model, StudentWithProjections) else None
            )
            s_feat = s_feats[s_name]
            if projection is not None and not isinstance(projection, nn.Identity):
                s_feat = projection(s_feat)
            loss = loss + cfg.feature_weight * feature_kd(s_feat, t_feats[t_name])
        return loss

    def _contrastive_hard(self, student: nn.Module, s_out: Any, targets: Any) -> torch.Tensor:
        if isinstance(self.base, ContrastiveTask):
            return self.base.loss_from_embeddings(student, s_out[0], s_out[1], targets)
        return F.cross_entropy(s_out[0].float(), targets)
