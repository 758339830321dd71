"""`fashion-clip`: CLIP-style dual encoder, small CNN image tower + real all-MiniLM-L6-v2 text tower."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.models.adapter import Adapter
from mmcompress.models.layers import SmallCNN
from mmcompress.models.minilm import MiniLMEncoder, load_minilm_tokenizer


class DualEncoder(nn.Module):
    """Image and text towers with projection heads into a shared, L2-normalised space.

    Forward returns `(image_embeds, text_embeds)`, each (B, embed_dim) with unit norm.

    Args:
        embed_dim: shared embedding width.
        cnn_widths: channel widths of the image tower.
        pretrained_text: load the real MiniLM weights (False only for fast tests).

    Example:
        >>> model = DualEncoder()
        >>> img, txt = model(**model.example_inputs(2))
    """

    def __init__(self, embed_dim: int = 128, cnn_widths=(16, 32, 64), pretrained_text: bool = True) -> None:
        super().__init__()
        self.image_tower = SmallCNN(tuple(cnn_widths))
        self.text_tower = MiniLMEncoder(pretrained=pretrained_text)
        self.image_proj = nn.Linear(self.image_tower.out_dim, embed_dim)
        self.text_proj = nn.Linear(MiniLMEncoder.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer = load_minilm_tokenizer()

    def adapter(self) -> Adapter:
        return Adapter(
            towers={
                "image": ("image_tower",),
                "text": ("text_tower",),
                "fusion": ("image_proj", "text_proj", "logit_scale"),
            },
            example_inputs=self.example_inputs,
        )

    def tokenize(self, texts: list[str], max_length: int = 24) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def example_inputs(self, batch_size: int = 2) -> dict[str, torch.Tensor]:
        texts = ["a photo of a coat", "a picture of a sneaker"] * ((batch_size + 1) // 2)
        return {"image": torch.zeros(batch_size, 1, 28, 28), **self.tokenize(texts[:batch_size])}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_tower(image)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text(self.text_tower(input_ids, attention_mask))

    def project_text(self, text_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_features), dim=-1)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image), self.encode_text(input_ids, attention_mask)
