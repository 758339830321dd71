"""Repair an encoder-decoder (Whisper) after compression: teacher-forced distillation.

The student reads the same teacher-forced decoder inputs as the teacher (a transcript per clip,
e.g. the float model's own: `audio.speech.pseudo_label`) and learns the teacher's next-token
distribution at every real position: KL(teacher || student) with padding masked out of the loss
(Hinton et al. 2015; sequence-level KD for speech, Kim & Rush 2016, teacher-forced). Optionally the
encoder's last hidden state is matched too (mean squared error relative to the teacher's mean
square, FitNets-style), which guides an encoder whose heads were pruned more directly than the
next-token loss does alone. Teacher outputs are computed once and kept (float16 log-probabilities of
the real positions only), so each step costs one student forward and backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn

from mmcompress.core.batches import call_model, check_finite
from mmcompress.core.config import FrozenConfig
from mmcompress.errors import ConfigError, DataError

__all__ = ["Seq2SeqRepairConfig", "distill_seq2seq", "masked_kl"]


class Seq2SeqRepairConfig(FrozenConfig):
    """Teacher-forced distillation settings.

    Attributes:
        steps: optimizer steps (batches cycle in order, reshuffled each pass with `seed`).
        lr: AdamW peak learning rate (linear warm-up over `warmup` steps, then cosine to 10%).
        warmup: warm-up steps.
        encoder_weight: weight of the encoder-state loss (0: next-token KL only).
        grad_clip: gradient norm clip.
        seed: order of the batches.
        validate_every: with `validation=` batches, measure the held-out loss every this many steps.

    Example:
        >>> Seq2SeqRepairConfig(steps=100).lr
        0.0001
    """

    steps: int = Field(200, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    warmup: int = Field(10, ge=0)
    encoder_weight: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = 0
    validate_every: int = Field(20, ge=1)


def masked_kl(teacher_log_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the rows given: (N, V) log-probs, (N, V) logits -> scalar.

    Example:
        >>> float(masked_kl(torch.zeros(1, 2).log_softmax(-1), torch.zeros(1, 2)))
        0.0
    """
    log_p, log_q = teacher_log_probs.float(), student_logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def distill_seq2seq(
    teacher: nn.Module,
    student: nn.Module,
    batches: Sequence[dict[str, Any]],
    config: Seq2SeqRepairConfig | dict | None = None,
    *,
    validation: Sequence[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Train `student` in place to read like `teacher` on teacher-forced batches.

    Args:
        teacher: the float model (not changed; run in eval mode).
        student: the compressed model, trained in place; its training flag is restored.
        batches: model inputs with `decoder_input_ids` and `decoder_attention_mask` (padding = 0),
            e.g. `data.collate.calibration_batches(model, speech_batches(labelled))`.
        config: a Seq2SeqRepairConfig or a dict of its fields.
        validation: held-out batches of the same form (ideally from the deployment domain). The
            loss on them is measured before training and every `validate_every` steps, and the
            student ends with the weights of the best measurement, so the repair never leaves it
            worse on them than it found it (0 steps kept when every step made it worse).

    Returns:
        {"loss_first", "loss_last"}: mean loss over the first and the last tenth of the steps;
        with `validation`, also "validation_before", "validation_best" and "best_step".

    Example:
        >>> batches = calibration_batches(teacher, speech_batches(pseudo_label(teacher, clips), pack_seconds=29))
        >>> distill_seq2seq(teacher, student, batches, {"steps": 200, "encoder_weight": 1.0})["loss_last"]
        0.12
    """
    cfg = config if isinstance(config, Seq2SeqRepairConfig) else Seq2SeqRepairConfig(**(config or {}))
    batches = list(batches)
    if not batches:
        raise DataError("seq2seq distillation got no batches")
    targets = [_teacher_targets(teacher, batch, cfg.encoder_weight > 0) for batch in batches]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, cfg.warmup, cfg.steps))
    order = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    was_training = student.training
    checks = [(b, _teacher_targets(teacher, b, cfg.encoder_weight > 0)) for b in validation or []]
    if validation is not None and not checks:
        raise DataError("seq2seq distillation got validation=[] (pass held-out batches, or None)")
    best = _Best(student, checks, cfg.encoder_weight) if checks else None
    student.train()
    try:
        queue: list[int] = []
        for step in range(1, cfg.steps + 1):
            if not queue:
                queue = torch.randperm(len(batches), generator=order).tolist()
            i = queue.pop()
            loss = _loss(student, batches[i], targets[i], cfg.encoder_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if best is not None and (step % cfg.validate_every == 0 or step == cfg.steps):
                best.measure(step)
        if best is not None:
            best.restore()
    finally:
        student.train(was_training)
    tenth = max(1, len(losses) // 10)
    result = {"loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth}
    return result | (best.summary() if best is not None else {})


class _Best:
    """The student's weights at its lowest held-out loss so far (measured in eval mode)."""

    def __init__(self, student: nn.Module, checks: list, encoder_weight: float) -> None:
        self.student, self.checks, self.encoder_weight = student, checks, encoder_weight
        self.before = self.loss = self._held_out()
        self.step, self.state = 0, self._copy()

    def _held_out(self) -> float:
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                losses = [float(_loss(self.student, b, t, self.encoder_weight)) for b, t in self.checks]
        finally:
            self.student.train(was_training)
        return sum(losses) / len(losses)

    def _copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def measure(self, step: int) -> None:
        loss = self._held_out()
        if loss < self.loss:
            self.loss, self.step, self.state = loss, step, self._copy()

    def restore(self) -> None:
        self.student.load_state_dict(self.state)

    def summary(self) -> dict[str, float]:
        return {"validation_before": self.before, "validation_best": self.loss, "best_step": float(self.step)}


def _teacher_targets(teacher: nn.Module, batch: dict[str, Any], encoder: bool) -> dict[str, torch.Tensor]:
    if not isinstance(batch, dict) or "decoder_attention_mask" not in batch:
        raise ConfigError("seq2seq distillation needs dict batches with decoder_input_ids and decoder_attention_mask")
    check_finite(batch, "seq2seq distillation")
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            out = call_model(teacher, batch)
    finally:
        teacher.train(was_training)
    mask = batch["decoder_attention_mask"].bool()
    target = {"log_probs": out.logits[mask].float().log_softmax(-1).half()}  # (N, V): real positions only
    if encoder:
        target["encoder"] = out.encoder_last_hidden_state.detach().half()
    return target


def _loss(student: nn.Module, batch: dict[str, Any], target: dict[str, torch.Tensor], encoder_weight: float):
    out = call_model(student, batch)
    mask = batch["decoder_attention_mask"].bool()
    loss = masked_kl(target["log_probs"], out.logits[mask])
    if encoder_weight > 0:
        ref = target["encoder"].float()
        loss = loss + encoder_weight * (out.encoder_last_hidden_state - ref).pow(2).mean() / ref.pow(2).mean()
    return loss


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
