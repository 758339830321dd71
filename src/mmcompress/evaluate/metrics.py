"""Pure metric functions (tensors in, floats out)."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy: (N, C), (N,) -> fraction correct.

    Example:
        >>> accuracy(torch.tensor([[0.1, 0.9]]), torch.tensor([1]))
        1.0
    """
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((logits.argmax(-1) == labels).float().mean())


def zero_shot_accuracy(image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: torch.Tensor) -> float:
    """CLIP zero-shot accuracy: nearest class prompt embedding. (N, D), (C, D), (N,) -> float.

    Example:
        >>> zero_shot_accuracy(torch.eye(2), torch.eye(2), torch.tensor([0, 1]))
        1.0
    """
    return accuracy(image_embeds @ class_embeds.T, labels)


def precision_at_k(similarity: torch.Tensor, relevant: torch.Tensor, k: int = 10) -> float:
    """Mean precision@k for retrieval. (Q, N) scores, (Q, N) bool relevance -> float.

    Example:
        >>> precision_at_k(torch.tensor([[0.9, 0.1]]), torch.tensor([[True, False]]), k=1)
        1.0
    """
    if similarity.shape != relevant.shape:
        raise ValueError(f"shape mismatch: similarity {tuple(similarity.shape)} vs relevant {tuple(relevant.shape)}")
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices  # (Q, k)
    return float(relevant.gather(1, top).float().mean())


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors flattened to vectors."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def top1_agreement(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of rows whose argmax matches the reference's: (N, C), (N, C) -> float.

    Example:
        >>> top1_agreement(torch.tensor([[0.1, 0.9], [2.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        0.5
    """
    if reference.shape != logits.shape or reference.shape[0] == 0:
        raise ValueError(
            f"need two non-empty logit tensors of one shape, got {tuple(reference.shape)} and {tuple(logits.shape)}"
        )
    return float((reference.argmax(-1) == logits.argmax(-1)).double().mean())


def mean_kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(logits)) in nats: (N, C), (N, C) -> float.

    Example:
        >>> mean_kl(torch.zeros(2, 3), torch.zeros(2, 3))
        0.0
    """
    if reference.shape != logits.shape or reference.shape[0] == 0:
        raise ValueError(
            f"need two non-empty logit tensors of one shape, got {tuple(reference.shape)} and {tuple(logits.shape)}"
        )
    log_p = torch.log_softmax(reference.double(), -1)
    log_q = torch.log_softmax(logits.double(), -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
