"""Distillation losses against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmcompress.distill.losses import (
    attention_kd,
    attention_probs,
    contrastive_kd,
    embedding_kd,
    feature_kd,
    logit_kd,
    soft_kl,
)


def test_soft_kl_matches_hand_computation_and_scales_with_t_squared():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # teacher p = (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(soft_kl(s, t, 1.0)) == pytest.approx(expected, rel=1e-5)
    # at T the teacher logits are divided by T: p = softmax(log(3)/2, 0); loss carries T^2 = 4
    p = torch.softmax(torch.tensor([math.log(3.0) / 2, 0.0]), 0)
    kl2 = float((p * (p / 0.5).log()).sum())
    assert float(soft_kl(s, t, 2.0)) == pytest.approx(4 * kl2, rel=1e-5)


def test_logit_kd_mixes_hard_and_soft_and_checks_inputs():
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    mixed = logit_kd(s, t, y, temperature=3.0, alpha=0.25)
    assert float(mixed) == pytest.approx(0.25 * float(soft_kl(s, t, 3.0)) + 0.75 * float(F.cross_entropy(s, y)))
    assert float(logit_kd(s, t, None, 3.0)) == pytest.approx(float(soft_kl(s, t, 3.0)))
    with pytest.raises(ValueError, match="temperature"):
        logit_kd(s, t, y, temperature=0.0)
    with pytest.raises(ValueError, match="teacher's classes"):
        logit_kd(torch.randn(5, 3), t, y)


def test_gradients_flow_into_the_student_only():
    student, teacher = torch.randn(3, 6, requires_grad=True), torch.randn(3, 6, requires_grad=True)
    logit_kd(student, teacher, None, 2.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_feature_kd_projects_and_names_the_fix():
    proj = torch.nn.Linear(4, 8)
    assert feature_kd(torch.randn(2, 4), torch.randn(2, 8), proj) > 0
    with pytest.raises(ValueError, match=r"Linear\(4, 8\)"):
        feature_kd(torch.randn(2, 4), torch.randn(2, 8))


def test_attention_kd_is_zero_for_equal_maps_and_positive_otherwise():
    a = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    b = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    assert float(attention_kd(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_kd(b, a)) > 0
    with pytest.raises(ValueError, match="heads"):
        attention_kd(a[:, :2], a)


def test_contrastive_kd_zero_when_the_student_is_the_teacher():
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    assert float(contrastive_kd(img, txt, img, txt)) == pytest.approx(0.0, abs=1e-6)
    other = F.normalize(torch.randn(6, 8), dim=-1)
    assert float(contrastive_kd(other, txt, img, txt)) > 0.1


def test_embedding_kd_is_one_minus_cosine():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert float(embedding_kd(s, t)) == pytest.approx(0.5)  # rows: 1 - 0 and 1 - 1
    with pytest.raises(ValueError, match=r"Linear\(2, 3\)"):
        embedding_kd(s, torch.randn(2, 3))


def test_attention_probs_reproduce_scaled_dot_product_attention_with_padding():
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    probs = attention_probs(q, k, heads=2, key_mask=mask)  # (2, 2, 4, 6)
    split = lambda x: x.view(2, -1, 2, 4).transpose(1, 2)  # noqa: E731
    want = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask[:, None, None].bool())
    assert torch.allclose(probs @ split(v), want, atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 4)) and float(probs[1, :, :, 3:].abs().max()) == 0.0
