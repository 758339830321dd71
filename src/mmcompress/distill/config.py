"""Distillation settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmcompress.core.config import FrozenConfig
from mmcompress.train.config import TrainConfig


class DistillConfig(FrozenConfig):
    """How a student learns from a teacher.

    Attributes:
        temperature: softening temperature T of the teacher's and student's distributions (> 0).
        alpha: weight of the distillation loss; 1 - alpha goes to the task's own (hard-label) loss.
        mode: "auto" (two outputs, as a dual encoder returns: contrastive; one: logits),
            "logits", "contrastive" (CLIP-KD: similarity-matrix KL + feature mimicry) or
            "embedding" (1 - cosine between the output embeddings, for sentence encoders; the
            teacher's outputs are the only targets).
        mimic_weight: weight of the per-tower feature mimicry in contrastive mode.
        features: student module -> teacher module whose outputs the student's should match
            (a learnable Linear projection is added when widths differ).
        feature_weight: weight of the feature losses.
        attentions: student attention module -> teacher attention module whose attention maps
            the student's should match (KL per head; head counts must agree).
        attention_weight: weight of the attention losses.
        cache_teacher: compute the teacher's outputs once per training sample and reuse them in
            later epochs (valid when batches have no random augmentation; not with features or
            attentions, which need the teacher to run).
        unlabeled: ignore targets (teacher soft targets only; alpha is taken as 1).
        batchnorm: "train" (BatchNorm layers of the student normalise with batch statistics and
            update their running ones, as usual) or "frozen" (they stay in eval mode: the running
            statistics, e.g. re-estimated after pruning with `recalibrate_batchnorm`, are kept and
            used, and only their scale and shift train). Use "frozen" to repair a pruned CNN on a
            small or narrow set of unlabeled inputs, whose batch statistics would drag the running
            ones away from what the model saw in training.
        dropout: False keeps the student's Dropout layers off while it trains. Use it to repair a
            compressed model toward its own float teacher, which runs without dropout: matching it
            through dropout noise moves weights the student needs (MobileNetV2 with 30% of its
            channels removed, 20 steps at lr 1e-4: held-out KL 0.121 -> 0.275 with dropout, 0.202
            without; with lr 1e-5 and fresh crops: 0.105 after 300 steps).
        train: the training loop's settings (epochs, lr, amp, ...; `freeze` names student modules).

    Example:
        >>> DistillConfig(temperature=2.0, alpha=0.5, features={"blocks.0": "blocks.1"}).alpha
        0.5
    """

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    mode: Literal["auto", "logits", "contrastive", "embedding"] = "auto"
    mimic_weight: float = Field(1.0, ge=0)
    features: dict[str, str] = Field(default_factory=dict)
    feature_weight: float = Field(1.0, ge=0)
    attentions: dict[str, str] = Field(default_factory=dict)
    attention_weight: float = Field(1.0, ge=0)
    cache_teacher: bool = False
    unlabeled: bool = False
    batchnorm: Literal["train", "frozen"] = "train"
    dropout: bool = True
    train: TrainConfig = TrainConfig()
