"""Training configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mmcompress.core.config import FrozenConfig


class TrainConfig(FrozenConfig):
    """How to train or fine-tune.

    Attributes:
        epochs: passes over the training data.
        batch_size: global batch size (split across processes under torchrun).
        lr, weight_decay: optimizer settings; the learning rate follows warm-up + cosine decay.
        optimizer: "adamw" (default) or "sgd" (with `momentum`, Nesterov): SGD moves each weight in
            proportion to its gradient, where Adam moves every weight by about `lr` from the first
            step; fine-tuning a pretrained CNN after pruning is the classic case for SGD.
        momentum: SGD's momentum (ignored by AdamW).
        amp: "auto" (bf16 on GPU, off on CPU), "none", "bf16" or "fp16" (with loss scaling).
        seed: seeds shuffling and initialisation.
        freeze: module-name prefixes whose parameters are not trained (kept in eval mode).
        max_steps_per_epoch: cap on steps per epoch (short fine-tunes).
        grad_clip: max gradient norm (None: no clipping).
        device: "auto", "cpu" or "cuda".
        early_stopping: stop after this many epochs without a better `monitor` value on the
            validation data, and restore the best epoch's weights (None: train every epoch). The
            weights before training compete as epoch 0 (measured before the first epoch): a run
            that only makes things worse gives back what it started from.
        monitor: the validation metric early stopping watches (default: the task's primary
            metric); names containing "loss" are minimised, the others maximised.
        log_dir: write TensorBoard event files here (needs the `tensorboard` package).
        lr_scale: module-name prefix -> multiplier of `lr` for its parameters (e.g.
            {"text_tower": 0.05} fine-tunes a pretrained transformer gently beside a new CNN).

    Example:
        >>> TrainConfig(epochs=1, amp="bf16").to_dict()["amp"]
        'bf16'
    """

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    seed: int = 0
    freeze: tuple[str, ...] = ()
    max_steps_per_epoch: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    early_stopping: int | None = Field(None, ge=1)
    monitor: str | None = None
    log_dir: str | None = None
    lr_scale: tuple[tuple[str, float], ...] = ()

    @field_validator("lr_scale", mode="before")
    @classmethod
    def _pairs(cls, value):  # written as a mapping in YAML / Python; stored as sorted pairs (hashable)
        return tuple(sorted(value.items())) if isinstance(value, dict) else value

    def identity(self) -> dict:
        """The settings that determine the trained weights (hashed for caches and resume); fields
        added later are left out while unset, so older caches stay valid."""
        data = self.to_dict()
        for key in ("early_stopping", "monitor", "log_dir", "lr_scale"):
            if not data.get(key):
                data.pop(key, None)
        if data.get("optimizer") == "adamw":  # momentum means nothing to AdamW
            data.pop("optimizer", None)
            data.pop("momentum", None)
        data.pop("log_dir", None)  # where logs go does not change the weights
        return data
