"""Image + caption classifiers, one per fusion style, and single-modality baselines.

- `EarlyFusion` (single stream): image patches and text tokens in one transformer.
- `LateFusion` (multi-stream): separate towers, features concatenated at the end.
- `CrossAttentionFusion` (layer-wise): each stream attends to the other in every block.

All take `(image, input_ids, attention_mask)` and return class logits (B, classes).
"""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.data.captions import caption_vocabulary
from mmcompress.data.tokenizer import WordTokenizer
from mmcompress.models.adapter import Adapter
from mmcompress.models.layers import Block, PatchEmbed, SmallCNN, TokenEmbed, masked_mean

MAX_TEXT = 16


class _CaptionModel(nn.Module):
    """Shared plumbing: word tokenizer over the caption corpus and example inputs."""

    towers: dict[str, tuple[str, ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = WordTokenizer.from_corpus(text for text, _, _ in caption_vocabulary())

    def adapter(self) -> Adapter:
        return Adapter(towers=dict(self.towers), example_inputs=self.example_inputs)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, max_length=MAX_TEXT)

    def example_inputs(self, batch_size: int = 2) -> dict[str, torch.Tensor]:
        texts = ["a photo of a top", "a shoe on a plain background"] * ((batch_size + 1) // 2)
        return {"image": torch.zeros(batch_size, 1, 28, 28), **self.tokenize(texts[:batch_size])}


class TextEncoder(nn.Module):
    """Token embedding + transformer blocks + masked mean: (B, L) -> (B, dim).

    Example:
        >>> TextEncoder(100, 32, 1, 4)(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5)).shape
        torch.Size([2, 32])
    """

    def __init__(self, vocab_size: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = TokenEmbed(vocab_size, dim, MAX_TEXT)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, attention_mask)
        return masked_mean(self.norm(x), attention_mask)


class EarlyFusion(_CaptionModel):
    """Single stream: [CLS] + image patches + text tokens, with modality embeddings, one transformer.

    Example:
        >>> model = EarlyFusion()
        >>> model(**model.example_inputs(2)).shape
        torch.Size([2, 10])
    """

    towers = {
        "image": ("patch_embed",),
        "text": ("token_embed",),
        "fusion": ("type_embed", "cls", "encoder", "norm", "head"),
    }

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.token_embed = TokenEmbed(len(self.tokenizer), dim, MAX_TEXT)
        self.type_embed = nn.Embedding(2, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        img = self.patch_embed(image) + self.type_embed.weight[0]  # (B, 49, D)
        txt = self.token_embed(input_ids) + self.type_embed.weight[1]  # (B, L, D)
        cls = self.cls.expand(img.shape[0], -1, -1)
        x = torch.cat([cls, img, txt], dim=1)
        keep = torch.ones(img.shape[0], 1 + img.shape[1], dtype=attention_mask.dtype, device=image.device)
        mask = torch.cat([keep, attention_mask], dim=1)
        for block in self.encoder:
            x = block(x, mask)
        return self.head(self.norm(x[:, 0]))


class LateFusion(_CaptionModel):
    """Multi-stream: CNN image tower and transformer text tower, concatenated into an MLP head.

    Example:
        >>> model = LateFusion()
        >>> model(**model.example_inputs(2)).shape
        torch.Size([2, 10])
    """

    towers = {"image": ("image_tower",), "text": ("text_tower",), "fusion": ("head",)}

    def __init__(self, dim: int = 64, depth: int = 1, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.image_tower = SmallCNN((16, 32, dim))
        self.text_tower = TextEncoder(len(self.tokenizer), dim, depth, heads)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, classes))

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self.image_tower(image), self.text_tower(input_ids, attention_mask)], dim=-1)
        return self.head(feats)


class CrossAttentionFusion(_CaptionModel):
    """Layer-wise fusion: per block, each stream self-attends, then cross-attends to the other.

    Example:
        >>> model = CrossAttentionFusion(depth=2)
        >>> model(**model.example_inputs(2)).shape
        torch.Size([2, 10])
    """

    towers = {
        "image": ("patch_embed", "image_blocks", "norm_i"),
        "text": ("token_embed", "text_blocks", "norm_t"),
        "fusion": ("head",),
    }

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.token_embed = TokenEmbed(len(self.tokenizer), dim, MAX_TEXT)
        self.image_blocks = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(depth))
        self.text_blocks = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(depth))
        self.norm_i, self.norm_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        img, txt = self.patch_embed(image), self.token_embed(input_ids)
        for img_block, txt_block in zip(self.image_blocks, self.text_blocks, strict=True):
            img, txt = (
                img_block(img, None, txt, attention_mask),
                txt_block(txt, attention_mask, img, None),
            )
        pooled = torch.cat([self.norm_i(img).mean(1), masked_mean(self.norm_t(txt), attention_mask)], dim=-1)
        return self.head(pooled)


class ImageOnly(_CaptionModel):
    """Baseline that ignores the caption (same CNN tower as LateFusion).

    Example:
        >>> ImageOnly()(**ImageOnly().example_inputs(2)).shape
        torch.Size([2, 10])
    """

    towers = {"image": ("image_tower",), "fusion": ("head",)}

    def __init__(self, dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.image_tower = SmallCNN((16, 32, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_tower(image))


class TextOnly(_CaptionModel):
    """Baseline that ignores the image (same text tower as LateFusion).

    Example:
        >>> TextOnly()(**TextOnly().example_inputs(2)).shape
        torch.Size([2, 10])
    """

    towers = {"text": ("text_tower",), "fusion": ("head",)}

    def __init__(self, dim: int = 64, depth: int = 1, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.text_tower = TextEncoder(len(self.tokenizer), dim, depth, heads)
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.text_tower(input_ids, attention_mask))
