"""Teacher-forced distillation of an encoder-decoder (the repair after Whisper head pruning): the
student moves towards the teacher on the real positions, padding never enters the loss."""

from __future__ import annotations

import copy

import pytest
import torch

from mmcompress.distill.seq2seq import Seq2SeqRepairConfig, _loss, _teacher_targets, distill_seq2seq, masked_kl
from mmcompress.errors import ConfigError, DataError
from mmcompress.models.adapter import adapter_for
from mmcompress.models.hf.tiny import tiny_model


def _kl(teacher, student, batch):
    with torch.no_grad():
        mask = batch["decoder_attention_mask"].bool()
        t, s = teacher(**batch).logits[mask], student(**batch).logits[mask]
    return float(masked_kl(t.log_softmax(-1), s))


def _teacher_and_damaged_student():
    """Tiny Whisper and a copy whose encoder weights are perturbed."""
    torch.manual_seed(0)
    teacher = tiny_model("whisper").eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, student


def test_student_moves_towards_the_teacher_and_keeps_its_mode():
    teacher, student = _teacher_and_damaged_student()
    batch = adapter_for(teacher).example_inputs(2)
    batch["decoder_attention_mask"][1, -3:] = 0  # padding
    before = _kl(teacher, student, batch)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = distill_seq2seq(teacher, student, [batch], {"steps": 30, "lr": 3e-3, "warmup": 2, "encoder_weight": 1.0})
    assert _kl(teacher, student, batch) < 0.5 * before
    assert result["loss_last"] < result["loss_first"]
    assert not student.training and not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())


def test_padding_positions_do_not_enter_the_loss():
    torch.manual_seed(0)
    teacher = tiny_model("whisper").eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.proj_out.weight.mul_(1.5)
    batch = adapter_for(teacher).example_inputs(2)
    batch["decoder_attention_mask"][1, -3:] = 0
    other = {**batch, "decoder_input_ids": batch["decoder_input_ids"].clone()}
    other["decoder_input_ids"][1, -3:] = 7  # different tokens where the mask says padding (causal decoder)
    losses = [float(_loss(student, b, _teacher_targets(teacher, b, True), 1.0)) for b in (batch, other)]
    assert losses[0] > 0 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_batches_without_decoder_mask_are_refused_and_config_validates():
    teacher = tiny_model("whisper").eval()
    with pytest.raises(ConfigError, match="decoder_attention_mask"):
        distill_seq2seq(teacher, copy.deepcopy(teacher), [{"input_features": torch.zeros(1, 16, 64)}], {"steps": 1})
    with pytest.raises(ValueError, match="steps"):
        Seq2SeqRepairConfig(steps=0)


def test_validation_keeps_the_best_weights_and_never_ends_worse_than_before():
    teacher, damaged = _teacher_and_damaged_student()
    adapter = adapter_for(teacher)
    train = [adapter.example_inputs(2)]
    held_out = [{**train[0], "input_features": train[0]["input_features"] + 0.1 * torch.randn(2, 16, 64)}]
    good = copy.deepcopy(damaged)
    result = distill_seq2seq(teacher, good, train, {"steps": 40, "lr": 1e-3, "warmup": 2, "validate_every": 10},
                             validation=held_out)  # fmt: skip
    assert result["best_step"] > 0 and result["validation_best"] < result["validation_before"]
    assert _kl(teacher, good, held_out[0]) < 0.5 * _kl(teacher, damaged, held_out[0])
    ruined = copy.deepcopy(damaged)  # a learning rate that wrecks the model: the repair is undone
    result = distill_seq2seq(teacher, ruined, train, {"steps": 10, "lr": 5.0, "warmup": 0, "validate_every": 5},
                             validation=held_out)  # fmt: skip
    assert result["best_step"] == 0
    assert all(torch.equal(v, damaged.state_dict()[k]) for k, v in ruined.state_dict().items())
    with pytest.raises(DataError, match="validation"):
        distill_seq2seq(teacher, ruined, train, {"steps": 1}, validation=[])
