"""Robustness: the task metric on test data corrupted per modality (image noise and blur, text
typos and word dropout, audio noise), deterministic under a seed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

CORRUPTIONS = {
    "image_noise": ("image", "Gaussian pixel noise, sigma 0.1 of the range"),
    "image_blur": ("image", "Gaussian blur, sigma 1 pixel"),
    "text_typos": ("text", "a swap of two adjacent letters in 20% of the words"),
    "text_dropout": ("text", "20% of the words removed"),
    "audio_noise": ("audio", "white noise at 10 dB SNR"),
}


def corrupt(dataset: Any, kind: str, seed: int = 0) -> Any | None:
    """A corrupted copy of a built-in test set (None when it has no such modality).

    Example:
        >>> noisy = corrupt(load_dataset("fashion-captions", "test"), "image_noise", seed=0)
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPTIONS)}")
    g = torch.Generator().manual_seed(seed)
    if kind.startswith("image") and hasattr(dataset, "images"):
        images = dataset.images.float() / 255
        if kind == "image_noise":
            images = images + 0.1 * torch.randn(images.shape, generator=g)
        else:
            images = _blur(images, sigma=1.0)
        return dataclasses.replace(dataset, images=(images.clamp(0, 1) * 255).round().to(torch.uint8))
    if kind.startswith("text") and hasattr(dataset, "captions"):
        edit = _typo if kind == "text_typos" else _drop
        return dataclasses.replace(dataset, captions=[edit(c, g) for c in dataset.captions])
    if kind == "audio_noise" and hasattr(dataset, "audio"):
        audio = dataset.audio.float()
        power = audio.pow(2).mean(1, keepdim=True)
        noise = torch.randn(audio.shape, generator=g) * (power / 10 ** (10 / 10)).sqrt()
        return dataclasses.replace(dataset, audio=(audio + noise).clamp(-32767, 32767).round().to(torch.int16))
    return None


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    flat = images.reshape(-1, 1, *images.shape[-2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(images.shape)


def _typo(text: str, g: torch.Generator) -> str:
    words = text.split()
    for i, word in enumerate(words):
        if len(word) > 2 and torch.rand(1, generator=g).item() < 0.2:
            j = int(torch.randint(0, len(word) - 1, (1,), generator=g))
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    return " ".join(words)


def _drop(text: str, g: torch.Generator) -> str:
    words = text.split()
    kept = [w for w in words if torch.rand(1, generator=g).item() >= 0.2]
    return " ".join(kept or words[:1])


def robustness(
    models: dict[str, Any], make_task: Callable[[Any], Any], test: Any, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """corruption -> model label -> every metric of the task ("clean" first); corruptions a
    dataset has no modality for are left out. (Text corruptions of fashion-captions change the
    caption queries, so they show in retrieval, not in zero-shot accuracy over class prompts.)

    Example:
        >>> table = robustness({"float": model, "int8": q}, lambda ds: task_for(model, ds), test)
        >>> table["image_noise"]["int8"]["zero_shot_accuracy"]
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("clean", *CORRUPTIONS):
        data = test if kind == "clean" else corrupt(test, kind, seed)
        if data is None:
            continue
        task = make_task(data)
        out[kind] = {label: {k: float(v) for k, v in task.evaluate(m, data).items()} for label, m in models.items()}
    return out


def robustness_rows(table: dict[str, dict[str, dict[str, float]]]) -> list[list[str]]:
    """A table (header first): one row per corruption and metric, one column per model."""
    labels = list(next(iter(table.values())))
    rows = [["corruption", "metric", *labels]]
    for kind, by_model in table.items():
        for metric in by_model[labels[0]]:
            rows.append([kind, metric, *(f"{by_model[label][metric]:.4f}" for label in labels)])
    return rows
