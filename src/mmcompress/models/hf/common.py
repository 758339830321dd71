"""Shared helpers of the Hugging Face adapters: present modules, raw data -> model inputs.

Raw multimodal batches are dicts: "image" (B, C, H, W) floats in [0, 1], "text" a list of
strings, "audio" a list of 1-D 16 kHz waveforms. Each family's `prepare` turns them into the
model's inputs (pixel_values, input_ids, input_features, ...).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.errors import DataError

CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
IMAGENET_MEAN, IMAGENET_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def present(model: nn.Module, *prefixes: str) -> tuple[str, ...]:
    """The prefixes that name a module or parameter of `model` (adapters cover head variants)."""
    names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    return tuple(p for p in prefixes if p in names)


def towers(model: nn.Module, spec: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """`spec` with absent prefixes dropped, and towers left without a prefix removed."""
    found = {modality: present(model, *prefixes) for modality, prefixes in spec.items()}
    return {m: p for m, p in found.items() if p}


def layer_paths(model: nn.Module, spec: dict[str, str]) -> dict[str, str]:
    """`spec` (modality -> ModuleList path) restricted to paths that are ModuleLists of `model`."""
    modules = dict(model.named_modules())
    return {m: p for m, p in spec.items() if isinstance(modules.get(p), nn.ModuleList)}


def sub_config(config: Any, name: str) -> Any:
    """`config.<name>` for composite models (CLIPModel), the config itself for single towers."""
    return getattr(config, name, None) or config


def need(raw: dict[str, Any], key: str, family: str) -> Any:
    """raw[key], or a DataError naming the modality the model needs."""
    if key not in raw or raw[key] is None:
        raise DataError(
            f"{family} needs {key!r} in every calibration batch; the batch has {sorted(raw)} "
            f"(a tower without data would stay uncalibrated)"
        )
    return raw[key]


def pixels(images: torch.Tensor, size: int, channels: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> (B, channels, size, size) normalised pixel values.

    Example:
        >>> pixels(torch.rand(2, 1, 28, 28), 32, 3).shape
        torch.Size([2, 3, 32, 32])
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    mean = torch.tensor(mean[:channels] if len(mean) >= channels else mean[:1] * channels).view(1, -1, 1, 1)
    std = torch.tensor(std[:channels] if len(std) >= channels else std[:1] * channels).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous()


def token_ids(model: nn.Module, texts: list[str], vocab_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize with the model's own tokenizer (`model.mmcompress_tokenizer`, set by
    `load_model("hf:...")`); a random-config model without one uses the packaged MiniLM
    WordPiece tokenizer with ids folded into its vocabulary (real words, so real statistics).

    Example:
        >>> token_ids(model, ["a coat"], vocab_size=1000, max_length=8)["input_ids"].shape
        torch.Size([1, 4])
    """
    tokenizer = getattr(model, "mmcompress_tokenizer", None) or _fallback_tokenizer()
    if getattr(tokenizer, "pad_token", "") is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"] % vocab_size
    return {"input_ids": ids, "attention_mask": enc["attention_mask"]}


@functools.lru_cache(maxsize=1)
def _fallback_tokenizer() -> Any:
    from mmcompress.models.minilm import load_minilm_tokenizer

    return load_minilm_tokenizer()


def random_texts(batch_size: int) -> list[str]:
    """Short real captions for example inputs."""
    base = ["a photo of a coat", "a picture of a sneaker", "a bag on a table", "someone says seven"]
    return [base[i % len(base)] for i in range(batch_size)]


def random_images(batch_size: int, seed: int = 0) -> torch.Tensor:
    """(B, 1, 28, 28) smooth random images in [0, 1] for example inputs."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(batch_size, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear")


def random_audio(batch_size: int, seconds: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    """Tones with noise at 16 kHz for example inputs."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    return [0.3 * torch.sin(2 * torch.pi * (200 + 50 * i) * t) + 0.01 * torch.randn(t.shape, generator=g)
            for i in range(batch_size)]  # fmt: skip
