"""Small building blocks: CNN image tower, patch embedding, transformer blocks with explicit q/k/v/o."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU image tower for 28x28 grayscale images: (B, 1, 28, 28) -> (B, widths[-1]).

    Example:
        >>> SmallCNN((16, 32, 64))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 64])
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image).mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and embed them: (B, 1, 28, 28) -> (B, 49, dim)."""

    def __init__(self, dim: int, patch: int = 4, image_size: int = 28) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2) + self.pos


class TokenEmbed(nn.Module):
    """Token + position embedding: (B, L) int -> (B, L, dim)."""

    def __init__(self, vocab_size: int, dim: int, max_length: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(input_ids) + self.pos[:, : input_ids.shape[1]]


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o Linear layers (prunable and quantizable).

    Example:
        >>> Attention(64, 4)(torch.zeros(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, D) -> (B, H, N, D/H)
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        mask = None
        if context_mask is not None:  # (B, M) 1=keep -> (B, 1, 1, M) bool
            mask = context_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block; with `cross=True` it also attends to a second stream."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, cross: bool = False) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.cross = Attention(dim, heads) if cross else None
        self.norm_c = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, context_mask=mask)
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_c(x), context, context_mask)
        return x + self.mlp(self.norm2(x))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens that the mask keeps: (B, N, D), (B, N) -> (B, D)."""
    if mask is None:
        return x.mean(1)
    w = mask.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1e-6)
