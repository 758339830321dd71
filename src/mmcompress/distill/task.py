"""DistillationTask: wraps a task so the foundation's training loop (AMP, torchrun, checkpoints,
progress) trains a student against a frozen teacher."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.batches import call_model, prediction
from mmcompress.distill.config import DistillConfig
from mmcompress.distill.losses import attention_kd, attention_probs, contrastive_kd, embedding_kd, feature_kd, logit_kd
from mmcompress.errors import ConfigError, ModelError
from mmcompress.models.adapter import adapter_for
from mmcompress.models.attention import head_parts
from mmcompress.train.embedding_task import EmbeddingTask
from mmcompress.train.tasks import Task


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


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm of `model` in eval mode (running statistics used and kept; affine still trains).

    Example:
        >>> freeze_batchnorm(student.train())  # called before each step by DistillConfig(batchnorm="frozen")
    """
    _eval_mode(model, nn.modules.batchnorm._BatchNorm)


def dropout_off(model: nn.Module) -> None:
    """Put every Dropout of `model` in eval mode (no units dropped while it trains).

    Example:
        >>> dropout_off(student.train())  # called before each step by DistillConfig(dropout=False)
    """
    _eval_mode(model, nn.modules.dropout._DropoutNd)


def _eval_mode(model: nn.Module, kind: type) -> None:
    for module in model.modules():
        if isinstance(module, kind):
            module.eval()


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


QK_NAMES = (("q", "k"), ("query", "key"), ("q_proj", "k_proj"))
HEAD_NAMES = ("heads", "num_attention_heads", "num_heads")


def attention_parts(module: nn.Module, name: str = "") -> tuple[nn.Module, nn.Module, int]:
    """(query Linear, key Linear, heads) of an attention module: ours (`q`/`k`/`heads`), Hugging
    Face BERT/ViT (`self.query`/`self.key`) and CLIP/Whisper-style (`q_proj`/`k_proj`).

    Example:
        >>> q, k, heads = attention_parts(Attention(64, 4))
    """
    parts = head_parts(module)  # the attention classes adapters know
    if parts is not None:
        return parts[0], parts[1], parts[4]
    for holder in (module, getattr(module, "self", None), getattr(module, "attention", None)):
        if holder is None:
            continue
        for q_name, k_name in QK_NAMES:
            q, k = getattr(holder, q_name, None), getattr(holder, k_name, None)
            if isinstance(q, nn.Module) and isinstance(k, nn.Module):
                for attr in HEAD_NAMES:
                    heads = getattr(holder, attr, None) or getattr(getattr(holder, "config", None), attr, None)
                    if isinstance(heads, int):
                        return q, k, heads
    raise ConfigError(
        f"module {name!r} ({type(module).__name__}) is not an attention module with query/key projections "
        "and a head count; name the attention module itself (e.g. 'bert.encoder.layer.0.attention')"
    )


@contextmanager
def captured_attention(model: nn.Module, names: list[str], key_mask: torch.Tensor | None = None):
    """Yields `maps(name)`: the attention map (B, H, N, M) of a named attention module in the last
    forward pass inside, rebuilt from its query and key projections (works whatever attention
    kernel the model runs)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ModelError(f"{type(model).__name__} has no module {missing[0]!r} for attention distillation")
    parts = {name: attention_parts(modules[name], name) for name in names}
    qk: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    handles = []
    for name, (q, k, _heads) in parts.items():
        for role, sub in (("q", q), ("k", k)):

            def hook(module, args, out, name=name, role=role):
                qk[name][role] = out

            handles.append(sub.register_forward_hook(hook))

    def maps(name: str) -> torch.Tensor:
        q, k = qk[name]["q"], qk[name]["k"]
        mask = key_mask if key_mask is not None and key_mask.shape[-1] == k.shape[1] else None
        return attention_probs(q, k, parts[name][2], mask)

    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _rows(data: Any, rows: torch.Tensor) -> Any:
    """The selected rows of a batch: a tensor, a dict / tuple of tensors, or None."""
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return data[rows]
    if isinstance(data, dict):
        return {k: _rows(v, rows) for k, v in data.items()}
    return type(data)(_rows(v, rows) for v in data)


class TeacherCache:
    """The frozen teacher's outputs per training sample, computed the first time a sample is seen.

    Valid when a sample's inputs are the same every epoch (no random augmentation).

    Example:
        >>> cache = TeacherCache()
        >>> cache.dataset(train)
        >>> logits = cache.get(index, lambda rows: teacher(images[rows]))
    """

    def __init__(self) -> None:
        self.size = 0
        self.store: list[torch.Tensor] | None = None
        self.known: torch.Tensor | None = None
        self.single = True

    def dataset(self, data: Any) -> None:
        if self.size != len(data):
            self.size, self.store, self.known = len(data), None, torch.zeros(len(data), dtype=torch.bool)

    def get(self, index: torch.Tensor, compute) -> Any:
        """Outputs for the samples at `index`; `compute(rows)` runs the teacher on the batch rows
        whose samples are not cached yet."""
        index_cpu = index.cpu()
        missing = (~self.known[index_cpu]).nonzero().flatten()
        if len(missing):
            out = compute(missing.to(index.device))
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            self.single = not isinstance(out, (tuple, list))
            if self.store is None:
                self.store = [torch.zeros(self.size, *o.shape[1:], dtype=o.dtype) for o in outs]
            for store, o in zip(self.store, outs, strict=True):
                store[index_cpu[missing]] = o.detach().cpu()
            self.known[index_cpu[missing]] = True
        got = [store[index_cpu].to(index.device) for store in self.store]
        return got[0] if self.single else tuple(got)


class DistillationTask(Task):
    """The base task's batches and metrics; the loss mixes distillation and the task's own loss.

    Example:
        >>> task = DistillationTask(ClassificationTask(), teacher, DistillConfig(temperature=4))
        >>> fit(student, task, train, TrainConfig(epochs=3))
    """

    def __init__(self, base: Task, teacher: nn.Module, config: DistillConfig) -> None:
        self.base, self.teacher, self.config = base, teacher.eval(), config
        if config.cache_teacher and (config.features or config.attentions):
            raise ConfigError("cache_teacher keeps only the teacher's outputs; features and attentions need it to run")
        self.teacher_outputs = TeacherCache()
        self.primary_metric = base.primary_metric
        for p in teacher.parameters():
            p.requires_grad_(False)

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        inputs, targets = self.base.batch(dataset, index)
        if self.config.cache_teacher:  # the loss needs the sample indices to look the teacher up
            self.teacher_outputs.dataset(dataset)
            return inputs, (targets, index)
        return inputs, targets

    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 512) -> dict[str, float]:
        return self.base.evaluate(unwrap(model), dataset, batch_size)

    def prepare(self, model: nn.Module) -> None:
        self.teacher.eval()
        self.base.prepare(unwrap(model))
        self.teacher_embed = None
        teacher_hooks = [*self.config.features.values(), *self.config.attentions.values()]
        text = adapter_for(self.teacher).modality_of
        if hasattr(self.base, "frozen_embedder") and not any(text(n) == "text" for n in teacher_hooks):
            self.teacher_embed = self.base.frozen_embedder(self.teacher)  # e.g. text features once per caption

    def _forward(self, model: nn.Module, inputs: Any, targets: Any, teacher: bool) -> Any:
        """Both embeddings of a dual encoder when the task gives them (its caches included), else the prediction."""
        if teacher and self.teacher_embed is not None:
            return self.teacher_embed(inputs, targets)
        if hasattr(self.base, "embeddings"):
            return self.base.embeddings(model, inputs, targets)
        return prediction(call_model(model, inputs))

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        cfg, student = self.config, unwrap(model)
        if cfg.batchnorm == "frozen":
            freeze_batchnorm(student)
        if not cfg.dropout:
            dropout_off(student)
        index = None
        if cfg.cache_teacher:
            targets, index = targets
        s_names, t_names = list(cfg.features), list(cfg.features.values())
        key_mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        with (
            captured_outputs(self.teacher, t_names) as t_feats,
            captured_attention(self.teacher, list(cfg.attentions.values()), key_mask) as t_maps,
            torch.no_grad(),
        ):
            if index is None:
                t_out = self._forward(self.teacher, inputs, targets, teacher=True)
            else:
                t_out = self.teacher_outputs.get(
                    index, lambda rows: self._forward(self.teacher, _rows(inputs, rows), _rows(targets, rows), True)
                )
            t_maps = {name: t_maps(name) for name in cfg.attentions.values()}
        with (
            captured_outputs(student, s_names) as s_feats,
            captured_attention(student, list(cfg.attentions), key_mask) as s_maps,
        ):
            s_out = self._forward(student, inputs, targets, teacher=False)
            s_maps = {name: s_maps(name) for name in cfg.attentions}
        loss = self._output_loss(student, s_out, t_out, targets)
        for s_name, t_name in cfg.features.items():
            projection = (
                model.projections[projection_key(s_name)] if isinstance(model, StudentWithProjections) else None
            )
            s_feat = s_feats[s_name]
            if projection is not None and not isinstance(projection, nn.Identity):
                s_feat = projection(s_feat)
            loss = loss + cfg.feature_weight * feature_kd(s_feat, t_feats[t_name])
        for s_name, t_name in cfg.attentions.items():
            loss = loss + cfg.attention_weight * attention_kd(s_maps[s_name], t_maps[t_name])
        return loss

    def _output_loss(self, student: nn.Module, s_out: Any, t_out: Any, targets: Any) -> torch.Tensor:
        cfg = self.config
        if cfg.mode == "embedding" or (cfg.mode == "auto" and isinstance(self.base, EmbeddingTask)):
            first = (lambda out: out[0]) if isinstance(s_out, (tuple, list)) else (lambda out: out)
            return embedding_kd(first(s_out), first(t_out))
        contrastive = cfg.mode == "contrastive" or (cfg.mode == "auto" and isinstance(s_out, (tuple, list)))
        hard_weight = 0.0 if cfg.unlabeled else 1.0 - cfg.alpha
        if contrastive:
            loss = contrastive_kd(*s_out[:2], *t_out[:2], cfg.temperature, feature_weight=cfg.mimic_weight)
            loss = (1.0 - hard_weight) * loss
            if hard_weight:
                loss = loss + hard_weight * self._contrastive_hard(student, s_out, targets)
        else:
            loss = logit_kd(s_out, t_out, None if cfg.unlabeled else targets, cfg.temperature, cfg.alpha)
        return loss

    def _contrastive_hard(self, student: nn.Module, s_out: Any, targets: Any) -> torch.Tensor:
        if hasattr(self.base, "loss_from_embeddings"):
            return self.base.loss_from_embeddings(student, s_out[0], s_out[1], targets)
        return F.cross_entropy(s_out[0].float(), targets)
