"""Audio as a third modality: a log-mel CNN audio tower and an image + audio fusion classifier."""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.models.adapter import Adapter
from mmcompress.models.layers import SmallCNN

N_MELS, FRAMES = 40, 100


class LogMelAudioTower(nn.Module):
    """Conv-BN-ReLU tower over a log-mel spectrogram: (B, n_mels, frames) -> (B, widths[-1]).

    Example:
        >>> LogMelAudioTower((16, 32, 64))(torch.zeros(2, 40, 100)).shape
        torch.Size([2, 64])
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.cnn = SmallCNN(tuple(widths))
        self.out_dim = self.cnn.out_dim

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.cnn(audio.unsqueeze(1))  # (B, M, T) -> (B, 1, M, T) -> (B, C)


class ImageAudioFusion(nn.Module):
    """Late fusion of a digit-image tower and a spoken-digit audio tower; `use` picks the towers,
    so the single-modality baselines are the same model with one tower.

    Args:
        use: which towers feed the head: ("image", "audio"), ("image",) or ("audio",).
        image_widths / audio_widths: channel widths of the towers.

    Example:
        >>> model = ImageAudioFusion()
        >>> model(**model.example_inputs(2)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, use=("image", "audio"), image_widths=(16, 32, 64), audio_widths=(16, 32, 64), classes: int = 10
    ) -> None:
        super().__init__()
        self.use = tuple(use)
        if not self.use or set(self.use) - {"image", "audio"}:
            raise ValueError(f"use must name 'image' and/or 'audio', got {self.use}")
        width = 0
        if "image" in self.use:
            self.image_tower = SmallCNN(tuple(image_widths))
            width += self.image_tower.out_dim
        if "audio" in self.use:
            self.audio_tower = LogMelAudioTower(tuple(audio_widths))
            width += self.audio_tower.out_dim
        self.head = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, classes))

    def adapter(self) -> Adapter:
        towers = {m: (f"{m}_tower",) for m in self.use}
        return Adapter(towers={**towers, "fusion": ("head",)}, example_inputs=self.example_inputs)

    def example_inputs(self, batch_size: int = 2) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(batch_size, 1, 28, 28), "audio": torch.zeros(batch_size, N_MELS, FRAMES)}

    def forward(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if "image" in self.use:
            parts.append(self.image_tower(image))
        if "audio" in self.use:
            parts.append(self.audio_tower(audio))
        return self.head(torch.cat(parts, dim=1))
