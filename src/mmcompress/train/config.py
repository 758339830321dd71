"""Training configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmcompress.core.config import FrozenConfig


class TrainConfig(FrozenConfig):
    """How to train or fine-tune.

    Attributes:
        epochs: passes over the training data.
        batch_size: global batch size (split across processes under torchrun).
        lr, weight_decay: AdamW settings; the learning rate follows warm-up + cosine decay.
        amp: "auto" (bf16 on GPU, off on CPU), "none", "bf16" or "fp16" (with loss scaling).
        seed: seeds shuffling and initialisation.
        freeze: module-name prefixes whose parameters are not trained (kept in eval mode).
        max_steps_per_epoch: cap on steps per epoch (short fine-tunes).
        grad_clip: max gradient norm (None: no clipping).
        device: "auto", "cpu" or "cuda".

    Example:
        >>> TrainConfig(epochs=1, amp="bf16").to_dict()["amp"]
        'bf16'
    """

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    seed: int = 0
    freeze: tuple[str, ...] = ()
    max_steps_per_epoch: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
