"""A recurrent (LSTM) caption classifier: the built-in model for pruning recurrent text models."""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.models.fusion import _CaptionModel
from mmcompress.models.layers import masked_mean


class CaptionLSTM(_CaptionModel):
    """Word embedding -> single-layer LSTM -> masked mean over tokens -> Linear: caption -> class.

    Takes the fusion models' inputs `(image, input_ids, attention_mask)` and ignores the image,
    so it trains and evaluates on `fashion-captions` like the text-only baseline.

    Example:
        >>> model = CaptionLSTM()
        >>> model(**model.example_inputs(2)).shape
        torch.Size([2, 10])
    """

    towers = {"text": ("embed", "lstm"), "fusion": ("head",)}

    def __init__(self, embed_dim: int = 64, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(self.tokenizer), embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embed(input_ids))  # (B, L, hidden)
        return self.head(masked_mean(states, attention_mask))
