"""Shared fixtures: small real data and tiny models; every test uses a temporary cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcompress.data.registry import load_dataset
from mmcompress.models.adapter import Adapter


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits (real, always available): (train, test)."""
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="session")
def captions_small():
    """A small real slice of fashion-captions: (train, test)."""
    return load_dataset("fashion-captions", "train", limit=1500), load_dataset("fashion-captions", "test", limit=400)


class TwoTower(nn.Module):
    """A tiny two-modality model with an adapter, for technique tests."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.text = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(16 * 4, 16))
        self.head = nn.Linear(8 + 16, 10)

    def adapter(self) -> Adapter:
        return Adapter(
            towers={"image": ("image",), "text": ("text",), "fusion": ("head",)},
            example_inputs=lambda b: (torch.randn(b, 1, 8, 8), torch.randint(0, 50, (b, 4))),
        )

    def forward(self, image, ids):
        return self.head(torch.cat([self.image(image), self.text(ids)], dim=-1))


@pytest.fixture
def two_tower():
    return TwoTower()
