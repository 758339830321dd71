"""Distillation losses (pure functions, shapes in comments).

- `logit_kd`: Hinton et al. 2015: KL(teacher_T || student_T) * T^2, mixed with the hard-label loss.
- `feature_kd`: mean squared error between (projected) student and teacher hidden states.
- `embedding_kd`: 1 - cosine similarity between student and teacher embeddings (sentence encoders).
- `attention_kd`: KL between teacher and student attention distributions (TinyBERT / MiniLM);
  `attention_probs` rebuilds those distributions from captured query and key projections.
- `contrastive_kd`: the student's image-text similarity matrix learns the teacher's soft targets
  in both directions (CLIP-KD), plus feature mimicry per tower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over rows: (N, C), (N, C) -> ().

    The T^2 factor keeps gradient magnitudes comparable across temperatures.

    Example:
        >>> float(soft_kl(torch.zeros(2, 3), torch.zeros(2, 3), 4.0))
        0.0
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; give the student the teacher's classes (or a projection)"
        )
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


def logit_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """alpha * soft_kl(T) + (1 - alpha) * cross_entropy(student, targets); targets None: soft only.

    Example:
        >>> logit_kd(torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,)), 4.0, 0.5)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if targets is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits.float(), targets)


def feature_kd(student: torch.Tensor, teacher: torch.Tensor, projection: torch.nn.Module | None = None) -> torch.Tensor:
    """MSE between student features (projected to the teacher's width if given) and teacher features.

    Shapes: (..., d_s) and (..., d_t); without a projection d_s must equal d_t.

    Example:
        >>> float(feature_kd(torch.ones(2, 4), torch.ones(2, 4)))
        0.0
    """
    if projection is not None:
        student = projection(student)
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} do not match teacher features {tuple(teacher.shape)}; "
            f"add a projection Linear({student.shape[-1]}, {teacher.shape[-1]})"
        )
    return F.mse_loss(student.float(), teacher.detach().float())


def embedding_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over rows: (N, D), (N, D) -> (). Scale-free, so it suits
    sentence embeddings compared by cosine.

    Example:
        >>> float(embedding_kd(torch.ones(2, 4), 3 * torch.ones(2, 4)))
        0.0
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student embeddings {tuple(student.shape)} do not match teacher embeddings {tuple(teacher.shape)}; "
            f"add a projection Linear({student.shape[-1]}, {teacher.shape[-1]})"
        )
    return (1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)).mean()


def attention_probs(
    query: torch.Tensor, key: torch.Tensor, heads: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head)) per head: (B, N, D), (B, M, D) -> (B, H, N, M).

    `key_mask` (B, M), 1 = attend, hides padded keys as the model's own attention does.

    Example:
        >>> attention_probs(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8), heads=2).shape
        torch.Size([1, 2, 3, 3])
    """
    (b, n, d), m = query.shape, key.shape[1]
    if d % heads:
        raise ValueError(f"query width {d} is not divisible by {heads} heads")
    q = query.float().view(b, n, heads, d // heads).transpose(1, 2)
    k = key.float().view(b, m, heads, d // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)  # (B, H, N, M)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def attention_kd(student_attn: torch.Tensor, teacher_attn: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(teacher || student) between attention distributions: (B, H, N, N) each, rows sum to 1.

    Heads must match; average over batch, heads and query positions.

    Example:
        >>> a = torch.full((1, 2, 3, 3), 1 / 3)
        >>> float(attention_kd(a, a))
        0.0
    """
    if student_attn.shape != teacher_attn.shape:
        raise ValueError(
            f"student attention {tuple(student_attn.shape)} does not match teacher attention "
            f"{tuple(teacher_attn.shape)}; map student layers to teacher layers with the same heads"
        )
    t = teacher_attn.detach().float().clamp_min(eps)
    s = student_attn.float().clamp_min(eps)
    return (t * (t.log() - s.log())).sum(-1).mean()


def similarity_logits(image: torch.Tensor, text: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Scaled cosine similarities: (B, D), (B, D) unit-norm -> (B, B) image-to-text logits."""
    return scale * image @ text.T


def contrastive_kd(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    temperature: float = 1.0,
    scale: float = 1 / 0.07,
    feature_weight: float = 1.0,
) -> torch.Tensor:
    """CLIP-KD: the student's (B, B) similarity matrix matches the teacher's soft targets in both
    directions (image->text rows and text->image columns), plus feature mimicry of each tower.

    All embeddings (B, D) and L2-normalised; student and teacher widths must match (project first).

    Example:
        >>> e = F.normalize(torch.randn(4, 8), dim=-1)
        >>> float(contrastive_kd(e, e, e, e, feature_weight=0.0))  # identical: zero KL
        0.0
    """
    s = similarity_logits(student_image, student_text, scale)
    t = similarity_logits(teacher_image.detach(), teacher_text.detach(), scale)
    relation = 0.5 * (soft_kl(s, t, temperature) + soft_kl(s.T, t.T, temperature))
    if feature_weight == 0.0:
        return relation
    mimic = feature_kd(student_image, teacher_image) + feature_kd(student_text, teacher_text)
    return relation + feature_weight * mimic
